"""What each suppression direction writes to the logits, and what forcing it does (METHOD.md).

The paper reads directions through W_O and the unembedding and finds late-layer directions
pointing at function words and punctuation. Two measurements per (layer, head, direction):

1. Readout. readout_D = d_unit @ W_O[h] (Dh x D), its logits readout_D * scale_D @ E^T
   (`final_scale=True` includes the final RMSNorm's gain, which every residual component passes
   through before the tied unembedding E; the positive 1/rms factor does not change rankings).
   A direction's sign is arbitrary: eq. (1) removes <o, d> d, which is the same for -d. So each
   readout is ORIENTED by the sign of the direction's mean coefficient c = <o_{t,h}, d> over
   held-out tokens (o before suppression): the oriented readout is what the component typically
   ADDS to the logits. `promoted` / `suppressed` are its top / bottom `top_k` tokens.
2. Forcing. With r_{l,h,k} forced to 1 (`force_direction`) the component is removed at every
   position; with r forced to 0 it is kept. EXPECTED SIGN: mass(promoted, r=1) - mass(promoted,
   r=0) < 0 and the reverse for `suppressed`, when the coefficient's sign is consistent
   (`sign_agreement` near 1). Mass = next-token probability of the token set, averaged over
   held-out positions with weight 1.
   Null: the same token set's change when an unrelated direction (a different (layer, head)
   among those measured) is forced; reported as mean and std over those directions, and a z score.

Selection: every direction when L*H*K <= `top_n`, else the `top_n` with the largest readout norm
||d_unit @ W_O[h]||. The baseline has no directions, so only routing models are measured.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dirroute_jax.analysis import result as result_lib
from dirroute_jax.analysis.forward import complete, token_weighted_mean
from dirroute_jax.analysis.markdown import table
from dirroute_jax.analysis.tokens import is_function_token, token_label
from dirroute_jax.model import interventions as iv_lib
from dirroute_jax.model.routing import unit_directions
from dirroute_jax.model.transformer import Transformer, forward

PAPER = {"readout": "late-layer directions -> function words and punctuation"}


@dataclasses.dataclass(frozen=True)
class Mass:
  """Mean probability mass of one token set: as trained, with the direction's r forced to 1
  and to 0, and the forcing's effect beside the same forcing of unrelated directions."""

  as_trained: float
  r1: float
  r0: float
  delta_r1_minus_r0: float
  null_mean: float | None  # None without an unrelated direction
  null_std: float | None
  z: float | None


@dataclasses.dataclass(frozen=True)
class SteeredDirection:
  layer: int
  head: int
  direction: int
  readout_norm: float
  mean_coef: float
  mean_abs_coef: float
  mean_r: float
  sign_agreement: float
  promoted: list[str]  # the readout's top tokens
  suppressed: list[str]  # its bottom tokens
  mass_promoted: Mass
  mass_suppressed: Mass


@dataclasses.dataclass(frozen=True)
class Summary:
  expected_sign: str
  frac_promoted_delta_negative: float | None
  null_frac_promoted_delta_negative: float | None
  frac_suppressed_delta_positive: float | None
  null_frac_suppressed_delta_positive: float | None
  mean_delta_promoted: float | None
  null_mean_delta_promoted: float | None
  mean_delta_suppressed: float | None
  null_mean_delta_suppressed: float | None
  function_token_share_of_promoted_by_layer: dict[str, float | None]  # {layer: share}
  function_token_share_of_vocab: float | None


@dataclasses.dataclass(frozen=True)
class Steered:
  """`steer_directions`: the measured directions, largest readout norm first."""

  num_directions_total: int
  num_measured: int
  top_k: int
  final_scale: bool
  directions: list[SteeredDirection]
  summary: Summary


@dataclasses.dataclass(frozen=True)
class Steering(Steered):
  """The steering section: `Steered` for the workdir's routed model."""

  paper: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(PAPER))
  model: str = "routed"
  num_batches: int = 0
  eval_stride: float | None = None
  checkpoint_step: int = 0


def direction_readouts(model_cfg, params, *, final_scale: bool = True):
  """(readout_LxHxKxD, logits_LxHxKxV, norm_LxHxK), unoriented (see module doc)."""
  V, L = model_cfg.vocab_size, model_cfg.num_layers
  E_VxD = np.asarray(params["embed"]["embedding"], np.float64)[:V]
  scale_D = (
    np.asarray(params["final_norm"]["scale"], np.float64)
    if final_scale
    else np.ones(E_VxD.shape[1])
  )
  readout = []
  for l in range(L):
    attn = params[f"blocks_{l}"]["attn"]
    d_HxKxDh = np.asarray(unit_directions(attn["directions"]), np.float64)
    W_O_HxDhxD = np.asarray(attn["out"]["kernel"], np.float64)
    readout.append(np.einsum("hkd,hde->hke", d_HxKxDh, W_O_HxDhxD))
  readout_LxHxKxD = np.stack(readout)
  logits_LxHxKxV = (readout_LxHxKxD * scale_D) @ E_VxD.T
  return readout_LxHxKxD, logits_LxHxKxV, np.linalg.norm(readout_LxHxKxD, axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _coefficient_sums(model: Transformer, params, inputs_BxT, weights_BxT):
  """4 x L x H x K weighted sums of c, |c|, [c > 0] and r (c = <z, d_unit>)."""
  _, acts = forward(model, params, inputs_BxT, capture=("blocks.*.attn.z", "blocks.*.attn.r"))
  w = weights_BxT[:, :, None, None]
  out = []
  for l in range(model.cfg.num_layers):
    d_HxKxDh = unit_directions(params[f"blocks_{l}"]["attn"]["directions"])
    c_BxTxHxK = jnp.einsum(
      "bthd,hkd->bthk", acts[f"blocks.{l}.attn.z"].astype(jnp.float32), d_HxKxDh
    )
    out.append(
      jnp.stack(
        [
          jnp.sum(c_BxTxHxK * w, (0, 1)),
          jnp.sum(jnp.abs(c_BxTxHxK) * w, (0, 1)),
          jnp.sum((c_BxTxHxK > 0) * w, (0, 1)),
          jnp.sum(acts[f"blocks.{l}.attn.r"] * w, (0, 1)),
        ]
      )
    )
  return jnp.stack(out, axis=1)


def coefficient_stats(model: Transformer, params, batches) -> dict[str, np.ndarray]:
  """Per (l, h, k) over held-out tokens with weight 1, as trained: mean coefficient c =
  <z, d_unit> (z before suppression), mean |c|, sign agreement, mean routing weight r."""
  mean_c, mean_abs_c, frac_pos, mean_r = token_weighted_mean(
    lambda b: (_coefficient_sums(model, params, b["inputs"], b["weights"]), np.sum(b["weights"])),
    batches,
  )
  return {
    "mean_coef": mean_c,
    "mean_abs_coef": mean_abs_c,
    "mean_r": mean_r,
    "sign_agreement": np.where(mean_c >= 0, frac_pos, 1.0 - frac_pos),
  }


@functools.partial(jax.jit, static_argnums=0)
def set_mass(model: Transformer, params, inputs_BxT, weights_BxT, iv, sets_VxM):
  """(probability mass of each token set summed over positions with weight 1 (M), number of
  such positions). The model is static: one compile per shape, cached across calls."""
  logits_BxTxV, _ = forward(model, params, inputs_BxT, interventions=iv)
  p_BxTxV = jax.nn.softmax(logits_BxTxV[..., : model.cfg.vocab_size], axis=-1)
  m_BxTxM = jnp.einsum("btv,vm->btm", p_BxTxV, sets_VxM)
  return jnp.einsum("btm,bt->m", m_BxTxM, weights_BxT), jnp.sum(weights_BxT)


def _select(norm_LxHxK: np.ndarray, top_n: int | None) -> list[tuple[int, int, int]]:
  flat = np.argsort(-norm_LxHxK.ravel(), kind="stable")
  if top_n is not None:
    flat = flat[:top_n]
  return [tuple(int(i) for i in np.unravel_index(f, norm_LxHxK.shape)) for f in flat]


def steer_directions(
  model: Transformer,
  params,
  batches: list[dict],
  decode=None,
  *,
  top_n: int | None = 16,
  top_k: int = 10,
  final_scale: bool = True,
  directions: list[tuple[int, int, int]] | None = None,
) -> Steered:
  """Readout and forcing of the routed model's directions (see module doc).

  `directions` overrides the top-N selection with explicit (layer, head, k) triples.
  `decode([id]) -> str` names a token (tokens.token_label; the id as a string when None).
  """
  cfg = model.cfg
  if not cfg.routing:
    raise ValueError("steering needs a model with routing (the baseline has no directions)")
  decode = decode or (lambda ids: str(ids[0]))
  V = cfg.vocab_size
  _, logits_LxHxKxV, norm_LxHxK = direction_readouts(cfg, params, final_scale=final_scale)
  stats = coefficient_stats(model, params, batches)
  sign_LxHxK = np.where(stats["mean_coef"] >= 0, 1.0, -1.0)
  chosen = list(directions) if directions is not None else _select(norm_LxHxK, top_n)
  N = len(chosen)

  # Token sets: column i = direction i's promoted set, column N + i its suppressed set.
  sets_VxM = np.zeros((V, 2 * N), np.float32)
  promoted, suppressed = [], []
  for i, (l, h, k) in enumerate(chosen):
    oriented_V = sign_LxHxK[l, h, k] * logits_LxHxKxV[l, h, k]
    order = np.argsort(-oriented_V, kind="stable")
    promoted.append(order[:top_k])
    suppressed.append(order[::-1][:top_k])
    sets_VxM[promoted[-1], i] = 1.0
    sets_VxM[suppressed[-1], N + i] = 1.0

  def mean_mass(iv) -> np.ndarray:
    return token_weighted_mean(
      lambda b: set_mass(model, params, b["inputs"], b["weights"], iv, sets_VxM), batches
    )

  as_trained_M = mean_mass(complete(cfg))
  # forced[v][i] = masses of every set with direction i's weight forced to v.
  forced = {
    v: np.stack(
      [mean_mass(complete(cfg, iv_lib.force_direction(cfg, l, h, k, v))) for (l, h, k) in chosen]
    )
    for v in (1.0, 0.0)
  }
  delta_NxM = forced[1.0] - forced[0.0]  # [forced direction, token set]

  rows = []
  for i, (l, h, k) in enumerate(chosen):
    unrelated = [j for j, (l2, h2, _) in enumerate(chosen) if (l2, h2) != (l, h)]
    mass = {}
    for key, col in (("mass_promoted", i), ("mass_suppressed", N + i)):
      null = delta_NxM[unrelated, col]
      delta = float(delta_NxM[i, col])
      null_mean = float(null.mean()) if null.size else None
      std = float(null.std()) if null.size > 1 else None
      mass[key] = Mass(
        as_trained=float(as_trained_M[col]),
        r1=float(forced[1.0][i, col]),
        r0=float(forced[0.0][i, col]),
        delta_r1_minus_r0=delta,
        null_mean=null_mean,
        null_std=std,
        z=(delta - null_mean) / std if std else None,
      )
    rows.append(
      SteeredDirection(
        layer=l,
        head=h,
        direction=k,
        readout_norm=float(norm_LxHxK[l, h, k]),
        **{s: float(stats[s][l, h, k]) for s in stats},
        promoted=[decode([int(t)]) for t in promoted[i]],
        suppressed=[decode([int(t)]) for t in suppressed[i]],
        **mass,
      )
    )
  return Steered(
    num_directions_total=int(norm_LxHxK.size),
    num_measured=N,
    top_k=top_k,
    final_scale=final_scale,
    directions=rows,
    summary=_summary(rows, chosen, delta_NxM, decode, V, cfg.num_layers),
  )


def _summary(rows: list[SteeredDirection], chosen, delta_NxM, decode, V, L) -> Summary:
  """Sign agreement with the expectation, against the off-diagonal null, and the share of
  function-word/punctuation tokens per layer against the vocabulary's share."""
  N = len(rows)
  off = np.array([[(a[0], a[1]) != (b[0], b[1]) for b in chosen] for a in chosen], bool)
  own_p = np.array([r.mass_promoted.delta_r1_minus_r0 for r in rows])
  own_s = np.array([r.mass_suppressed.delta_r1_minus_r0 for r in rows])
  null_p, null_s = delta_NxM[:, :N][off], delta_NxM[:, N:][off]
  frac = lambda x: float(np.mean(x)) if np.size(x) else None
  vocab_function = frac([is_function_token(decode([v])) for v in range(V)])
  by_layer = {}
  for l in range(L):
    toks = [t for r in rows if r.layer == l for t in r.promoted]
    if toks:
      by_layer[str(l)] = frac([is_function_token(t) for t in toks])
  return Summary(
    expected_sign="delta(promoted) < 0 and delta(suppressed) > 0 (r=1 removes the "
    "component the oriented readout describes)",
    frac_promoted_delta_negative=frac(own_p < 0),
    null_frac_promoted_delta_negative=frac(null_p < 0),
    frac_suppressed_delta_positive=frac(own_s > 0),
    null_frac_suppressed_delta_positive=frac(null_s > 0),
    mean_delta_promoted=frac(own_p),
    null_mean_delta_promoted=frac(null_p),
    mean_delta_suppressed=frac(own_s),
    null_mean_delta_suppressed=frac(null_s),
    function_token_share_of_promoted_by_layer=by_layer,
    function_token_share_of_vocab=vocab_function,
  )


def steering(
  run, *, top_n: int | None = 16, top_k: int = 10, num_batches: int = 2, final_scale: bool = True
) -> Steering | result_lib.Skipped:
  """Direction readouts and forcing for the routed model of a loaded workdir.

  Returns `Steering` (the measured directions, largest readout norm first, and the summary
  against the null), or Skipped without a routed model.
  """
  names = [n for n, m in run.models.items() if m.cfg.routing]
  if not names:
    return result_lib.Skipped("no model with routing in this workdir")
  batches = list(run.data.eval_batches(num_batches))
  result = steer_directions(
    run.models[names[0]],
    run.params[names[0]],
    batches,
    lambda ids: token_label(run.tokenizer, ids[0]),
    top_n=top_n,
    top_k=top_k,
    final_scale=final_scale,
  )
  return Steering(
    paper=dict(PAPER),
    model=names[0],
    num_batches=len(batches),
    eval_stride=run.data.eval_stride(num_batches),
    checkpoint_step=int(run.step),
    **{f.name: getattr(result, f.name) for f in dataclasses.fields(Steered)},
  )


def markdown(r: Steering) -> str:
  s = r.summary
  rows = [
    [
      "directions whose forcing (r=1 vs r=0) lowers their promoted tokens' mass",
      s.frac_promoted_delta_negative,
      s.null_frac_promoted_delta_negative,
    ],
    [
      "... raises their suppressed tokens' mass",
      s.frac_suppressed_delta_positive,
      s.null_frac_suppressed_delta_positive,
    ],
    ["mean Δ mass of promoted tokens", s.mean_delta_promoted, s.null_mean_delta_promoted],
    ["mean Δ mass of suppressed tokens", s.mean_delta_suppressed, s.null_mean_delta_suppressed],
  ]
  rows += [
    [f"function-token share of promoted tokens, layer {l}", v, s.function_token_share_of_vocab]
    for l, v in s.function_token_share_of_promoted_by_layer.items()
  ]
  top = [
    [
      f"L{d.layer} H{d.head} d{d.direction}",
      " ".join(repr(t) for t in d.promoted[:6]),
      d.mass_promoted.delta_r1_minus_r0,
      d.mass_promoted.z,
    ]
    for d in r.directions[:8]
  ]
  return "\n".join(
    [
      f"Expected sign: {s.expected_sign}. {r.num_measured} of "
      f"{r.num_directions_total} directions measured (largest readout norm).",
      "",
      table(["measure", "ours", "null (an unrelated direction forced)"], rows),
      "",
      table(["direction", "promoted tokens (readout)", "Δ mass r=1 vs r=0", "z vs null"], top),
      "",
      f"Paper: {r.paper['readout']}.",
    ]
  )
