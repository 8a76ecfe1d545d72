"""What the suppression directions write, and whether directions of different layers align.

Readout. A direction d (unit, head space) removed from head h's output takes away the logit
contribution d @ W_O[h] @ E^T (E the tied embedding, V x D): the readout over the vocabulary.
Its sign is arbitrary (eq. (1) is invariant under d -> -d), so we list both the top-k and the
bottom-k tokens. The paper says late-layer directions read out to function words and
punctuation; we measure the share of such tokens (`is_function_token`: whitespace-only,
punctuation-only, or a stop word) among the top-k and bottom-k, beside two controls: the same
share for random unit directions read out through the same W_O[h] (tokens with large embedding
norms top any readout), and the share of such tokens in the whole vocabulary.
Optionally the final RMSNorm's learned scale is applied before E (`final_norm_scale=True`);
the paper's formula, and our default, leave it out.

Cross-layer cosine. All unit directions (L*H*K of them, in R^{head_dim}) are compared pairwise;
per layer pair the mean |cos| (self-pairs excluded) and the mean signed cos. The paper's
"off-diagonal mean ~0" is what unrelated directions give too: for random unit vectors in n
dimensions the signed cos has mean 0 and sd 1/sqrt(n), and
E|cos| = Gamma(n/2) / (sqrt(pi) Gamma((n+1)/2)) ~ sqrt(2/(pi n)). Each number is reported
beside that null, analytic and sampled (the same number of random unit directions, redrawn).
Note that directions of different layers live in different head spaces, so even a cos far
from the null would need an argument to mean anything; within-layer pairs of one head are the
only ones acting on the same vectors.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from dirroute_jax.analysis import plots, verdicts
from dirroute_jax.analysis import result as result_lib
from dirroute_jax.analysis.load import as_workdir
from dirroute_jax.analysis.markdown import fmt, table
from dirroute_jax.analysis.tokens import STOP_WORDS, is_function_token, token_label
from dirroute_jax.analysis.verdicts import DOES_NOT_HOLD, HOLDS
from dirroute_jax.model.routing import unit_directions

PAPER = {
  "readout": "late-layer directions -> function words/punctuation",
  "cross_layer_cosine": "off-diagonal mean ~0",
}


@dataclasses.dataclass(frozen=True)
class DirectionReadout:
  """One direction through its head's W_O and the unembedding: the tokens it writes most."""

  top: list[str]
  top_ids: list[int]
  top_values: list[float]
  bottom: list[str]
  bottom_ids: list[int]
  bottom_values: list[float]
  function_share: float  # of top and bottom tokens
  # Where its largest readout falls among random directions' (same head).
  max_readout_percentile_vs_random: float


@dataclasses.dataclass(frozen=True)
class Cosine:
  """Cross-layer cosine of the unit directions, beside random directions'."""

  abs_mean: list[list[float]]  # L x L
  signed_mean: list[list[float]]  # L x L
  off_diagonal_abs_mean: float | None  # None with one layer (no pair of layers)
  off_diagonal_signed_mean: float | None
  null: dict[str, Any]  # `random_cosine_null`
  verdict_abs: str  # "n/a" with one layer
  verdict_signed: str
  note: str


@dataclasses.dataclass(frozen=True)
class RoutedDirections:
  readout: list[list[list[DirectionReadout]]]  # [layer][head][direction]
  function_share_per_layer: list[float]
  function_share_random_per_layer: list[float]
  function_share_vocab: float
  cosine: Cosine
  # Two-sample z of the share against random directions'; None in older reports.
  function_share_z_per_layer: list[float] | None = None


@dataclasses.dataclass(frozen=True)
class Directions:
  """The directions section: the routed model's directions (the baseline has none)."""

  protocol: dict[str, Any]
  paper: dict[str, Any]
  models: dict[str, RoutedDirections | result_lib.Skipped]


# ---------------------------------------------------------------- readout


def readout(
  dirs_HxKxDh, w_o_HxDhxD, embedding_VxD, *, vocab_size: int | None = None, norm_scale_D=None
) -> np.ndarray:
  """H x K x V: each unit direction through its head's W_O and the (tied) unembedding."""
  d_HxKxDh = np.asarray(unit_directions(np.asarray(dirs_HxKxDh, np.float32)), np.float64)
  write_HxKxD = np.einsum("hkd,hde->hke", d_HxKxDh, np.asarray(w_o_HxDhxD, np.float64))
  if norm_scale_D is not None:
    write_HxKxD = write_HxKxD * np.asarray(norm_scale_D, np.float64)
  E_VxD = np.asarray(embedding_VxD, np.float64)[:vocab_size]
  return write_HxKxD @ E_VxD.T


def top_tokens(readout_V: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices of the k largest and the k smallest readout values (largest/smallest first)."""
  k = min(k, readout_V.shape[-1])
  top = np.argpartition(-readout_V, k - 1)[:k]
  bottom = np.argpartition(readout_V, k - 1)[:k]
  return top[np.argsort(-readout_V[top])], bottom[np.argsort(readout_V[bottom])]


def random_unit_vectors(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
  g = rng.standard_normal((n, dim))
  return g / np.linalg.norm(g, axis=1, keepdims=True)


# ---------------------------------------------------------------- cosine and its null


def expected_abs_cos(dim: int) -> float:
  """E|cos| of two independent uniform unit vectors in R^dim (exact)."""
  return math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)


def abs_cos_sd(dim: int) -> float:
  """Standard deviation of |cos| (E cos^2 = 1/dim)."""
  return math.sqrt(max(1.0 / dim - expected_abs_cos(dim) ** 2, 0.0))


def layer_pair_cosines(
  units_NxDh: np.ndarray, layer_N: np.ndarray, num_layers: int
) -> tuple[np.ndarray, np.ndarray]:
  """(mean |cos|, mean cos), each L x L over direction pairs, self-pairs excluded."""
  cos_NxN = units_NxDh @ units_NxDh.T
  not_self = ~np.eye(len(units_NxDh), dtype=bool)
  abs_LxL, signed_LxL = np.zeros((2, num_layers, num_layers))
  for a in range(num_layers):
    for b in range(num_layers):
      block = np.ix_(layer_N == a, layer_N == b)
      keep = not_self[block]
      abs_LxL[a, b] = np.abs(cos_NxN[block])[keep].mean() if keep.any() else np.nan
      signed_LxL[a, b] = cos_NxN[block][keep].mean() if keep.any() else np.nan
  return abs_LxL, signed_LxL


def off_diagonal_mean(m_LxL: np.ndarray) -> float:
  L = m_LxL.shape[0]
  return float(m_LxL[~np.eye(L, dtype=bool)].mean()) if L > 1 else float("nan")


def random_cosine_null(
  dim: int, layer_N: np.ndarray, num_layers: int, *, draws: int = 200, seed: int = 0
) -> dict:
  """The cross-layer statistics for random unit directions of the same count, analytic and
  sampled (`draws` independent sets)."""
  rng = np.random.default_rng(seed)
  abs_off, signed_off, block_abs = [], [], []
  for _ in range(draws):
    abs_LxL, signed_LxL = layer_pair_cosines(
      random_unit_vectors(len(layer_N), dim, rng), layer_N, num_layers
    )
    abs_off.append(off_diagonal_mean(abs_LxL))
    signed_off.append(off_diagonal_mean(signed_LxL))
    block_abs.append(abs_LxL[~np.eye(num_layers, dtype=bool)])
  abs_off, signed_off = np.array(abs_off), np.array(signed_off)
  block_abs = np.concatenate(block_abs) if num_layers > 1 else np.array([np.nan])
  return {
    "dim": dim,
    "analytic_abs_cos_mean": expected_abs_cos(dim),
    "analytic_abs_cos_approx": math.sqrt(2 / (math.pi * dim)),
    "analytic_abs_cos_sd": abs_cos_sd(dim),
    "analytic_cos_sd": 1 / math.sqrt(dim),
    "sampled_off_diagonal_abs_mean": float(abs_off.mean()),
    "sampled_off_diagonal_abs_interval95": np.quantile(abs_off, [0.025, 0.975]).tolist(),
    "sampled_off_diagonal_signed_mean": float(signed_off.mean()),
    "sampled_off_diagonal_signed_interval95": np.quantile(signed_off, [0.025, 0.975]).tolist(),
    "sampled_layer_pair_abs_interval95": np.quantile(block_abs, [0.025, 0.975]).tolist(),
    "draws": draws,
  }


def _verdict(value: float, interval: list[float]) -> str:
  if interval[0] <= value <= interval[1]:
    return "within the random-direction null's 95% interval: indistinguishable from random"
  side = "above" if value > interval[1] else "below"
  return f"{side} the random-direction null's 95% interval"


# ---------------------------------------------------------------- the analysis


def directions(
  run,
  *,
  top_k: int = 10,
  random_per_head: int = 16,
  null_draws: int = 200,
  final_norm_scale: bool = False,
  seed: int = 0,
) -> Directions:
  """Readout of every direction and the cross-layer cosine matrix, each beside its null.

  Args:
    run: a `Workdir` (or its path).
    top_k: tokens listed per direction and sign.
    random_per_head: random unit directions per head for the readout control.
    null_draws: independent random direction sets for the sampled cosine null.
    final_norm_scale: multiply by the final RMSNorm's learned scale before the unembedding.
    seed: seed of the random controls.

  Returns:
    `Directions`, the baseline Skipped; the routed model's readout (per layer, head,
    direction: top / bottom tokens, ids and values, function share), function-token shares
    per layer beside random directions' and the vocabulary's, and the cross-layer cosine
    (L x L matrices, off-diagonal means, null, verdicts).
  """
  run = as_workdir(run)
  model, params = run.models["routed"], run.params["routed"]
  cfg = model.cfg
  L, H, K, Dh, V = (
    cfg.num_layers,
    cfg.num_heads,
    cfg.num_directions,
    cfg.head_dim,
    int(cfg.vocab_size),
  )
  tok = run.tokenizer
  names = [token_label(tok, i) for i in range(V)]  # a partial character as <0xE2>, not U+FFFD
  function_V = np.array([is_function_token(n) for n in names])
  E_VxD = np.asarray(params["embed"]["embedding"], np.float64)[:V]
  scale_D = np.asarray(params["final_norm"]["scale"], np.float64) if final_norm_scale else None
  rng = np.random.default_rng(seed)

  def share(ids):
    return float(function_V[ids].mean())

  layers, share_L, share_random_L, share_z_L, units = [], [], [], [], []
  for l in range(L):
    attn = params[f"blocks_{l}"]["attn"]
    dirs_HxKxDh, w_o = np.asarray(attn["directions"]), np.asarray(attn["out"]["kernel"])
    units.append(np.asarray(unit_directions(dirs_HxKxDh), np.float64).reshape(H * K, Dh))
    read_HxKxV = readout(dirs_HxKxDh, w_o, E_VxD, norm_scale_D=scale_D)
    rand_HxRxV = readout(
      random_unit_vectors(H * random_per_head, Dh, rng).reshape(H, random_per_head, Dh),
      w_o,
      E_VxD,
      norm_scale_D=scale_D,
    )
    heads, shares, rand_shares = [], [], []
    for h in range(H):
      rand_max_R = rand_HxRxV[h].max(-1)
      for r in range(random_per_head):
        top, bottom = top_tokens(rand_HxRxV[h, r], top_k)
        rand_shares += [share(top), share(bottom)]
      dirs = []
      for k in range(K):
        top, bottom = top_tokens(read_HxKxV[h, k], top_k)
        shares += [share(top), share(bottom)]
        dirs.append(
          DirectionReadout(
            top=[names[i] for i in top],
            top_ids=top.tolist(),
            top_values=read_HxKxV[h, k, top].tolist(),
            bottom=[names[i] for i in bottom],
            bottom_ids=bottom.tolist(),
            bottom_values=read_HxKxV[h, k, bottom].tolist(),
            function_share=(share(top) + share(bottom)) / 2,
            max_readout_percentile_vs_random=float(np.mean(rand_max_R < read_HxKxV[h, k].max())),
          )
        )
      heads.append(dirs)
    layers.append(heads)
    share_L.append(float(np.mean(shares)))
    share_random_L.append(float(np.mean(rand_shares)))
    # Two-sample z of the directions' mean share against the random directions' (Welch SE).
    se = (
      np.sqrt(np.var(shares, ddof=1) / len(shares) + np.var(rand_shares, ddof=1) / len(rand_shares))
      if len(shares) > 1
      else 0.0
    )
    share_z_L.append(float((share_L[-1] - share_random_L[-1]) / se) if se > 0 else 0.0)

  units_NxDh = np.concatenate(units)
  layer_N = np.repeat(np.arange(L), H * K)
  abs_LxL, signed_LxL = layer_pair_cosines(units_NxDh, layer_N, L)
  null = random_cosine_null(Dh, layer_N, L, draws=null_draws, seed=seed + 1)
  abs_off, signed_off = off_diagonal_mean(abs_LxL), off_diagonal_mean(signed_LxL)
  has_off = L > 1
  cosine = Cosine(
    abs_mean=abs_LxL.tolist(),
    signed_mean=signed_LxL.tolist(),
    off_diagonal_abs_mean=abs_off if has_off else None,
    off_diagonal_signed_mean=signed_off if has_off else None,
    null=null,
    verdict_abs=_verdict(abs_off, null["sampled_off_diagonal_abs_interval95"])
    if has_off
    else "n/a",
    verdict_signed=_verdict(signed_off, null["sampled_off_diagonal_signed_interval95"])
    if has_off
    else "n/a",
    note="A signed off-diagonal mean ~0 is also what random directions give (null "
    "mean 0, expected |cos| ~ sqrt(2/(pi*head_dim))): by itself it shows no "
    "structure.",
  )
  return Directions(
    protocol={
      "readout": "unit_dir @ W_O[h] @ embedding.T"
      + (" with the final norm scale" if final_norm_scale else ""),
      "sign": "direction sign is arbitrary: top and bottom tokens both listed",
      "function_token": "whitespace-only, punctuation-only or a stop word "
      f"({len(STOP_WORDS)} words)",
      "readout_control": f"{random_per_head} random unit directions per head, same W_O",
      "cosine": "all L*H*K unit directions; per layer pair mean |cos| and mean cos, "
      "self-pairs excluded",
      "top_k": top_k,
      "seed": seed,
    },
    paper=dict(PAPER),
    models={
      "routed": RoutedDirections(
        readout=layers,
        function_share_per_layer=share_L,
        function_share_random_per_layer=share_random_L,
        function_share_z_per_layer=share_z_L,
        function_share_vocab=float(function_V.mean()),
        cosine=cosine,
      ),
      "baseline": result_lib.Skipped("n/a (the baseline has no directions)"),
    },
  )


def claim_rows(r: Directions, report: dict) -> verdicts.Rows:
  """The claims this section tests (analysis/claims.py): `readout`, the function-token share
  of the last layer's directions above random directions' (z > 1.96); `cosine`, never "yes":
  the paper's "~0" is what random directions give, so matching it confirms nothing."""
  del report  # every number is this section's
  d = result_lib.model(r)
  if not d:
    return {}
  out = {}
  share, rand = d.function_share_per_layer[-1], d.function_share_random_per_layer[-1]
  z_L = d.function_share_z_per_layer
  z = z_L[-1] if z_L else 0.0
  out["readout"] = (
    f"function-token share, last layer {share:.2f} (random dirs {rand:.2f}, z {z:+.1f})",
    verdicts.uninformative("no z against random directions (older report)")
    if not z_L
    else HOLDS
    if z > 1.96
    else DOES_NOT_HOLD
    if z < -1.96
    else verdicts.no_difference("+/-1.96 sd of random directions"),
  )
  cos = d.cosine
  indistinguishable = "indistinguishable" in str(cos.verdict_abs)
  out["cosine"] = (
    f"mean |cos| {_one_layer(cos.off_diagonal_abs_mean)} (random "
    f"{fmt(cos.null['analytic_abs_cos_mean'])})",
    verdicts.no_difference("the random-direction null's spread")
    if indistinguishable
    else DOES_NOT_HOLD,
  )
  return out


def _one_layer(x: float | None) -> str:
  return "n/a (one layer)" if x is None else fmt(x)  # None: no pair of layers


def markdown(r: Directions) -> str:
  routed = r.models["routed"]
  cos = routed.cosine
  rows = [
    [f"layer {l}", share, routed.function_share_random_per_layer[l]]
    for l, share in enumerate(routed.function_share_per_layer)
  ]
  last = routed.readout[-1]
  examples = []
  for h, per_head in enumerate(last[:4]):
    for k, d in enumerate(per_head[:2]):
      examples.append(
        [
          f"L{len(routed.readout) - 1} H{h} d{k}",
          " ".join(repr(t) for t in d.top[:6]),
          " ".join(repr(t) for t in d.bottom[:6]),
        ]
      )
  return "\n".join(
    [
      table(
        [
          "readout of directions",
          "function-token share of top/bottom tokens",
          "random directions (null)",
        ],
        rows,
      ),
      f"\nVocabulary base rate of function tokens: {fmt(routed.function_share_vocab)}. "
      f"Paper: {r.paper['readout']}.",
      "",
      table(["direction", "top tokens (readout +)", "bottom tokens (readout -)"], examples),
      "",
      table(
        ["cross-layer cosine", "ours", "random-direction null", "verdict"],
        [
          [
            "off-diagonal mean |cos|",
            _one_layer(cos.off_diagonal_abs_mean),
            cos.null["analytic_abs_cos_mean"],
            cos.verdict_abs,
          ],
          [
            "off-diagonal mean cos",
            _one_layer(cos.off_diagonal_signed_mean),
            0.0,
            cos.verdict_signed,
          ],
        ],
      ),
      "",
      cos.note,
    ]
  )


def figures(r: Directions) -> dict:
  """Mean |cos| between the directions of every pair of layers, with the random null."""
  routed = result_lib.model(r)
  if routed is None:
    return {}
  cos = routed.cosine
  fig, ax = plots.plt.subplots(figsize=(4.2, 3.5))
  abs_mean_LxL = np.asarray(cos.abs_mean)
  im = ax.imshow(abs_mean_LxL, cmap="magma", vmin=0)
  ax.set_xlabel("layer")
  ax.set_ylabel("layer")
  plots.integer_ticks(ax.xaxis, abs_mean_LxL.shape[1])
  plots.integer_ticks(ax.yaxis, abs_mean_LxL.shape[0])
  ax.set_title(
    f"mean |cos| between directions\n(random null {cos.null['analytic_abs_cos_mean']:.3f})"
  )
  fig.colorbar(im, ax=ax, shrink=0.8)
  return {"directions_cosine": fig}
