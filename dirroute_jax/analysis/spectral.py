"""Routing vs filtering in QK^T (arXiv 2605.18826): the skew/symmetric split of every head's
bilinear kernel and the effective rank of its skew part per layer (the "spectral cascade"),
beside a random-weight null. Every definition below is repeated in the result's `protocol`.

Kernel. Head h scores query position t against key position s as x_t^T M x_s / sqrt(Dh), x the
attention input (the normed residual, norm scale included), with M = W_Q W_K^T (D x D,
rank <= Dh) when RoPE is set aside. No statistic here depends on 1/sqrt(Dh) or any scale of M.

Split. M = S + A, S = (M + M^T)/2 ("filtering": score(t, s) = score(s, t)) and
A = (M - M^T)/2 ("routing": score(t, s) = -score(s, t), a preferred direction of flow). S and
A are Frobenius-orthogonal, so skew_share = ||A||^2 / ||M||^2 and sym_share = ||S||^2 / ||M||^2
sum to 1. A = (W_Q W_K^T - W_K W_Q^T)/2 has rank <= 2 Dh (not Dh), and its singular values come
in equal pairs, one pair per rotation plane: a single plane is rank 2.

Effective rank (of A; of S too, for comparison), two definitions:
  erank: exp(entropy of p), p = singular values / their sum (Roy & Vetterli 2007); exactly k
    for k equal nonzero singular values, so one rotation plane gives 2.
  rank90 (A only): 2 x the fewest rotation planes (singular values paired largest first) that
    hold >= 90% of ||A||_F^2; even by construction.
Both are 0 for a zero matrix (singular values <= 1e-9 ||M||_F count as zero).

RoPE. Query t and key s are rotated by R_t and R_s, so their kernel is M(delta) =
W_Q R(-delta) W_K^T with delta = t - s >= 0 (causal), R(-delta) turning rotary pair i (dims i and
i + Dh/2) by -delta * theta^(-2i/Dh). Two views:
  offset0 (default): delta = 0, R = I. The content kernel W_Q W_K^T, the paper's object.
  offset_mean: W_Q Rbar W_K^T, Rbar the mean of R(-delta) over delta = 0..T-1 (uniform, T the
    trained seq_len): per pair, the mean cosine on the diagonal and the mean sine off it; the
    kernel a score sees on average over the offsets it is used at. Causal offsets are
    one-sided, so Rbar has a skew part of its own and RoPE adds routing even to a symmetric
    W_Q W_K^T: with one pair and W_Q = W_K = I the skew share is sin^2((T - 1) w / 2). Averaged
    over +-delta it would be 0. High-frequency pairs average towards 0, so this view keeps
    mostly the slow pairs.

Computation. M = Q m Q^T with Q an orthonormal basis of span[W_Q, W_K] (QR of the D x 2Dh
[W_Q, W_K]), so every statistic is computed exactly from the <= 2Dh x 2Dh matrix m.

Null. The same statistics for W_Q, W_K with i.i.d. Gaussian entries of the trained shapes,
which is the model at initialisation (normal init; the statistics are scale-free). Expected
skew share ~ (1 - 1/D)/2 (ratio of expectations), effective ranks near the maximum
min(D, 2 Dh).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dirroute_jax.analysis import plots, verdicts
from dirroute_jax.analysis import result as result_lib
from dirroute_jax.analysis.load import as_workdir
from dirroute_jax.analysis.markdown import fmt, table
from dirroute_jax.analysis.verdicts import yes_no

PAPER = {
  "skew_erank_layer1": 2.0,
  "trend": "routing effective rank grows with depth",
  "scale": "7M-355M parameters",
  "definition": "effective-rank definition not in the abstract [reconstructed]",
}

_ZERO = 1e-9  # singular values <= _ZERO * ||M||_F are numerical zeros


@dataclasses.dataclass(frozen=True)
class Cascade:
  """The skew erank's trend with depth (per-layer means over heads)."""

  skew_erank_first_layer: float
  skew_erank_last_layer: float
  slope_per_layer: float | None  # None with one layer (stored "n/a" in older reports)
  non_decreasing: bool


@dataclasses.dataclass(frozen=True)
class View:
  """Every statistic of one RoPE view of the kernel."""

  # {stat: L x H}; stats skew_share, sym_share, skew_erank, skew_rank90, sym_erank
  heads: dict[str, list[list[float]]]
  per_layer: dict[str, list[float]]  # {stat: L}, mean over heads
  cascade: Cascade


@dataclasses.dataclass(frozen=True)
class NullStat:
  mean: float
  std: float
  p05: float
  p95: float


@dataclasses.dataclass(frozen=True)
class Null:
  """The same statistics of i.i.d. Gaussian W_Q, W_K (the model at initialisation)."""

  offset0: dict[str, NullStat]
  offset_mean: dict[str, NullStat]
  analytic_skew_share: float
  max_rank: int
  heads_drawn: int


@dataclasses.dataclass(frozen=True)
class ModelSpectral:
  offset0: View
  offset_mean: View

  def view(self, name: str) -> View:
    return {"offset0": self.offset0, "offset_mean": self.offset_mean}[name]


@dataclasses.dataclass(frozen=True)
class Spectral:
  """The spectral section. A model without W_K (S-D attention) is a Skipped with the reason."""

  models: dict[str, ModelSpectral | result_lib.Skipped]
  null: Null
  paper: dict[str, Any]
  protocol: dict[str, Any]


def entropy_rank(sv_NxK, floor_N) -> np.ndarray:
  """(N,) exp(entropy of sv / sum(sv)) per row, 0 where every value is <= floor."""
  sv = np.where(sv_NxK > floor_N[:, None], sv_NxK, 0.0)
  total_Nx1 = sv.sum(-1, keepdims=True)
  p = sv / np.where(total_Nx1 > 0, total_Nx1, 1.0)
  h_N = -np.sum(p * np.log(np.where(p > 0, p, 1.0)), -1)
  return np.where(total_Nx1[:, 0] > 0, np.exp(h_N), 0.0)


def plane_rank(sv_NxK, floor_N, energy: float) -> np.ndarray:
  """(N,) 2 x the fewest rotation planes (sv pairs, descending) holding `energy` of sum(sv^2)."""
  e = np.where(sv_NxK > floor_N[:, None], sv_NxK, 0.0) ** 2
  if e.shape[-1] % 2:
    e = np.pad(e, ((0, 0), (0, 1)))
  cum_NxP = np.cumsum(e[:, 0::2] + e[:, 1::2], -1)
  total_Nx1 = cum_NxP[:, -1:]
  planes_N = np.sum(cum_NxP < energy * total_Nx1 * (1 - 1e-12), -1) + 1
  return np.where(total_Nx1[:, 0] > 0, 2 * planes_N, 0)


def head_stats(wq_NxDxDh, wk_NxDxDh, energy: float = 0.9) -> dict[str, np.ndarray]:
  """Statistics of M = W_Q W_K^T for N heads at once, each of shape (N,)."""
  wq, wk = (np.asarray(w, np.float64) for w in (wq_NxDxDh, wk_NxDxDh))
  Dh = wq.shape[-1]
  _, r_NxKx2Dh = np.linalg.qr(np.concatenate([wq, wk], -1))
  m_NxKxK = r_NxKx2Dh[..., :Dh] @ np.swapaxes(r_NxKx2Dh[..., Dh:], -1, -2)
  mt_NxKxK = np.swapaxes(m_NxKxK, -1, -2)
  sym, skew = (m_NxKxK + mt_NxKxK) / 2, (m_NxKxK - mt_NxKxK) / 2
  total_N = np.sum(m_NxKxK**2, (-2, -1))
  floor_N = _ZERO * np.sqrt(total_N)
  sv_skew = np.linalg.svd(skew, compute_uv=False)
  with np.errstate(invalid="ignore", divide="ignore"):
    return {
      "skew_share": np.sum(skew**2, (-2, -1)) / total_N,
      "sym_share": np.sum(sym**2, (-2, -1)) / total_N,
      "skew_erank": entropy_rank(sv_skew, floor_N),
      "skew_rank90": plane_rank(sv_skew, floor_N, energy),
      "sym_erank": entropy_rank(np.linalg.svd(sym, compute_uv=False), floor_N),
    }


def mean_rope_rotation(head_dim: int, theta: float, offsets_N) -> np.ndarray:
  """Dh x Dh mean of R(-delta) over delta in offsets_N: q_t . k_s after RoPE = q^T R(s - t) k.

  Rotate-half layout of `model.attention.rope`: pair i is dims (i, i + Dh/2), frequency
  theta^(-2i/Dh).
  """
  half = head_dim // 2
  angle_NxF = (
    np.asarray(offsets_N, np.float64)[:, None]
    * theta ** (-np.arange(0, head_dim, 2) / head_dim)[None]
  )
  cos_F, sin_F = np.cos(angle_NxF).mean(0), np.sin(angle_NxF).mean(0)
  r_DhxDh, i = np.zeros((head_dim, head_dim)), np.arange(half)
  r_DhxDh[i, i] = r_DhxDh[i + half, i + half] = cos_F
  r_DhxDh[i, i + half], r_DhxDh[i + half, i] = sin_F, -sin_F
  return r_DhxDh


def _kernels(params, cfg):
  """(W_Q, W_K) as L x H x D x Dh, or None where a layer has no key projection (S-D)."""
  attn = [params[f"blocks_{l}"]["attn"] for l in range(cfg.num_layers)]
  if any("key" not in a for a in attn):
    return None
  stack = lambda name: np.stack(
    [np.asarray(a[name]["kernel"], np.float64).transpose(1, 0, 2) for a in attn]
  )
  return stack("query"), stack("key")


def _view(wq_LxHxDxDh, wk_LxHxDxDh, energy: float) -> View:
  L, H, D, Dh = wq_LxHxDxDh.shape
  flat = head_stats(wq_LxHxDxDh.reshape(L * H, D, Dh), wk_LxHxDxDh.reshape(L * H, D, Dh), energy)
  heads = {k: v.reshape(L, H) for k, v in flat.items()}
  per_layer = {k: v.mean(1) for k, v in heads.items()}
  erank_L = per_layer["skew_erank"]
  return View(
    heads={k: v.tolist() for k, v in heads.items()},
    per_layer={k: v.tolist() for k, v in per_layer.items()},
    cascade=Cascade(
      skew_erank_first_layer=float(erank_L[0]),
      skew_erank_last_layer=float(erank_L[-1]),
      slope_per_layer=float(np.polyfit(np.arange(L), erank_L, 1)[0]) if L > 1 else None,
      non_decreasing=bool(np.all(np.diff(erank_L) >= 0)),
    ),
  )


def _summary(stats: dict[str, np.ndarray]) -> dict[str, NullStat]:
  return {
    k: NullStat(
      mean=float(np.mean(v)),
      std=float(np.std(v)),
      p05=float(np.percentile(v, 5)),
      p95=float(np.percentile(v, 95)),
    )
    for k, v in stats.items()
  }


def spectral(
  run, *, offsets: int | None = None, energy: float = 0.9, null_draws: int = 16, seed: int = 0
) -> Spectral:
  """Skew/symmetric shares and skew effective ranks of every head, both models, and a null.

  Args:
    run: a `Workdir` (or its path).
    offsets: T of the offset_mean view (delta = 0..T-1); default the trained seq_len.
    energy: the energy fraction of rank90.
    null_draws: random (W_Q, W_K) draws per head of the null (null_draws * H heads in all).
    seed: seed of the null.

  Returns:
    `Spectral`: per model both RoPE views (`View`: every head's statistics, per-layer means and
    the cascade), a model without W_K (S-D attention) Skipped; the null's summary per view and
    statistic, the analytic expected skew share and the maximum rank.
  """
  run = as_workdir(run)
  m = run.cfg.model
  D, H, Dh = int(m.d_model), int(m.num_heads), int(m.head_dim)
  T = int(offsets or run.cfg.seq_len)
  views = lambda theta: {
    "offset0": np.eye(Dh),
    "offset_mean": mean_rope_rotation(Dh, theta, np.arange(T)),
  }
  models = {}
  for name, model in run.models.items():
    kernels = _kernels(run.params[name], model.cfg)
    if kernels is None:
      models[name] = result_lib.Skipped(
        "n/a: no W_K (S-D attention: its operator is skew minus a diagonal by "
        "construction, and RoPE acts before it)"
      )
      continue
    wq, wk = kernels
    models[name] = ModelSpectral(
      **{v: _view(wq @ r, wk, energy) for v, r in views(model.cfg.rope_theta).items()}
    )

  rng = np.random.default_rng(seed)
  wq_NxDxDh, wk_NxDxDh = rng.standard_normal((2, null_draws * H, D, Dh))
  null = Null(
    **{
      v: _summary(head_stats(wq_NxDxDh @ r, wk_NxDxDh, energy))
      for v, r in views(m.rope_theta).items()
    },
    analytic_skew_share=(1 - 1 / D) / 2,
    max_rank=min(D, 2 * Dh),
    heads_drawn=null_draws * H,
  )
  protocol = {
    "kernel": "M = W_Q W_K^T per head (D x D) on the attention input; score = x_t^T M x_s "
    "/ sqrt(Dh); statistics are scale-free",
    "split": "S = (M + M^T)/2 filtering, A = (M - M^T)/2 routing; skew_share = "
    "||A||_F^2/||M||_F^2, sym_share = ||S||_F^2/||M||_F^2, sum 1",
    "erank": "exp(entropy of singular values / their sum) (Roy & Vetterli 2007); one "
    "rotation plane of A = 2",
    "rank90": f"2 x fewest rotation planes (paired singular values of A) holding >= "
    f"{energy:.0%} of ||A||_F^2",
    "zero": f"singular values <= {_ZERO:g} ||M||_F are zero; a zero part has rank 0",
    "rope_offset0": "relative offset delta = t - s = 0 (R = I): the content kernel (default)",
    "rope_offset_mean": f"W_Q Rbar W_K^T, Rbar = mean of R(-delta) over delta = 0..{T - 1} "
    "(uniform); one-sided offsets give RoPE a skew part of its own",
    "offsets_T": T,
    "energy": energy,
    "computation": "exact, in an orthonormal basis of span[W_Q, W_K] (<= 2 Dh dims)",
    "null": "i.i.d. Gaussian W_Q, W_K of the trained shapes (= the model at init; "
    "scale-free statistics)",
    "null_draws": null_draws,
    "seed": seed,
  }
  return Spectral(models=models, null=null, paper=dict(PAPER), protocol=protocol)


# A trend with depth needs at least this many layers: with two, "grows" is one comparison.
MIN_LAYERS_FOR_TREND = 3


def claim_rows(r: Spectral, report: dict) -> verdicts.Rows:
  """The claim this section tests (analysis/claims.py): `spectral`, the skew erank grows with
  depth *because of routing*: comparative, with the baseline (no router, same data and steps)
  as the control. Any trained transformer's skew erank may grow with depth, so growth alone
  says nothing about routing; the row holds only where the routed model's erank is below the
  random-weight p05 at layer 0, never decreases, and its slope per layer exceeds the
  baseline's. It does not hold where the routed slope is at or below the baseline's (or not
  positive). Gates (uninformative): fewer than MIN_LAYERS_FOR_TREND layers (two layers are one
  comparison, not a trend), or no baseline measured."""
  del report  # every number is this section's
  sp = result_lib.model(r)
  if not sp:
    return {}
  base = result_lib.model(r, "baseline")
  c = sp.offset0.cascade
  L = len(sp.offset0.per_layer["skew_erank"])
  p05 = r.null.offset0["skew_erank"].p05
  slope = c.slope_per_layer
  base_slope = base.offset0.cascade.slope_per_layer if base else None
  text = (
    f"skew erank {c.skew_erank_first_layer:.1f} -> {c.skew_erank_last_layer:.1f}, slope "
    f"{_slope(slope)}/layer vs baseline {_slope(base_slope)} (random-weight p05 {fmt(p05)})"
  )
  if L < MIN_LAYERS_FOR_TREND:
    return {
      "spectral": (
        text,
        verdicts.uninformative(
          f"{L} layers: one comparison, a trend with depth needs >= {MIN_LAYERS_FOR_TREND}"
        ),
      )
    }
  if base_slope is None or slope is None:
    return {"spectral": (text, verdicts.uninformative("no baseline slope to compare with"))}
  return {
    "spectral": (
      text,
      yes_no(
        bool(c.non_decreasing)
        and c.skew_erank_first_layer < p05
        and slope > 0
        and slope > base_slope
      ),
    )
  }


def markdown(r: Spectral) -> str:
  """Per-layer means over heads, each model beside the random-weight null, per RoPE view."""
  null, paper, p = r.null, r.paper, r.protocol
  models = result_lib.models(r)
  stats = {"skew_share": "skew share", "skew_erank": "skew erank", "skew_rank90": "skew rank90"}
  header = ["layer"] + [f"{n} {label}" for label in stats.values() for n in [*models, "null"]]
  out = []
  for view, title in (
    ("offset0", "RoPE offset 0: the content kernel W_Q W_K^T (default)"),
    ("offset_mean", f"RoPE averaged over offsets 0..{p['offsets_T'] - 1}"),
  ):
    rows = []
    for l in range(
      len(next(iter(models.values())).view(view).per_layer["skew_erank"]) if models else 0
    ):
      row = [f"layer {l}"]
      for key in stats:
        n = getattr(null, view)[key]
        row += [m.view(view).per_layer[key][l] for m in models.values()]
        row += [f"{fmt(n.mean)} [{fmt(n.p05)}, {fmt(n.p95)}]"]
      rows.append(row)
    slopes = ", ".join(
      f"{n} {_slope(m.view(view).cascade.slope_per_layer)}" for n, m in models.items()
    )
    out += [
      f"**{title}** (null: mean [p05, p95])",
      "",
      table(header, rows),
      "",
      f"Skew erank slope per layer: {slopes}.",
      "",
    ]
  out += [f"{n}: {m.reason}" for n, m in r.models.items() if isinstance(m, result_lib.Skipped)]
  out += [
    f"Null: {p['null']}; analytic skew share {fmt(null.analytic_skew_share)}, "
    f"maximum rank min(D, 2 Dh) = {null.max_rank}, {null.heads_drawn} heads. "
    f"Paper: skew erank {fmt(paper['skew_erank_layer1'])} at layer 1, {paper['trend']} "
    f"({paper['scale']}; {paper['definition']}).",
    "",
    f"Definitions: {p['split']}; erank = {p['erank']}; rank90 = {p['rank90']}; "
    f"{p['zero']}. RoPE offset_mean: {p['rope_offset_mean']}.",
  ]
  return "\n".join(out)


def _slope(slope: float | None) -> str:
  return "n/a" if slope is None else fmt(slope)  # None: one layer has no slope


def figures(r: Spectral) -> dict:
  """Per-layer mean skew (routing) effective rank, offset-0 kernel, beside the random null."""
  models = result_lib.models(r)
  if not models:
    return {}
  null = r.null.offset0["skew_erank"]
  fig, ax = plots.plt.subplots(figsize=(5.5, 3.4))
  for name, m in models.items():
    erank_L = np.asarray(m.offset0.per_layer["skew_erank"])
    ax.plot(np.arange(len(erank_L)), erank_L, "o-", label=name)
  ax.axhline(
    null.mean,
    color="k",
    ls="--",
    label=f"null: random W_Q, W_K ({null.p05:.1f}-{null.p95:.1f} p05-p95)",
  )
  ax.axhline(r.null.max_rank, color="gray", ls=":", label="maximum rank min(D, 2 Dh)")
  ax.plot(
    [0],
    [r.paper["skew_erank_layer1"]],
    "r*",
    ms=10,
    clip_on=False,
    zorder=3,
    label="paper: first layer (7M-355M models)",
  )  # near 0: not cut by the axis
  ax.set_ylim(bottom=0)
  plots.integer_ticks(ax.xaxis, len(erank_L))
  ax.set_xlabel("layer")
  ax.set_ylabel("skew-part effective rank (mean over heads)")
  ax.set_title("Spectral cascade: routing rank of W_Q W_K^T per layer")
  plots.legend_outside(ax, fontsize=7)  # inside, it covered the paper's point at rank ~2
  return {"spectral_cascade": fig}
