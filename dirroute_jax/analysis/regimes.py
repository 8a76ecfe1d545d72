"""Routing regimes: do the routing weights depend on the domain of the text?

The paper reports a routing variance across domains of 0.070 in layer 0 vs 0.00055 in layer 9,
10 vs 0 "specialist" heads, and 23/24 held-out prompts classified by domain from the 576-d
routing vector. It does not define "specialist" or the held-out protocol. Ours:

Routing vector of a window. For every held-out window (eval windows never mix domains) the
routed model's weights r (`blocks.{l}.attn.r`, B x T x H x K) are averaged over the window's
real input positions (weight 1), giving one vector of L*H*K features ordered
(layer, head, direction), labelled with the window's domain. With "causal_mean" pooling r
varies along the window; with "sequence_mean" it is constant and the average is exact.

Domain variance of a layer: the per-domain means of every feature, their variance across
domains (population variance over the domains, unweighted), averaged over the layer's H*K
features.

Specialist head. For head (l, h), eta^2 = between-domain sum of squares / total sum of squares
of its K features pooled (the share of the head's routing variation that the domain explains).
Null: the same statistic with the domain labels permuted. A head is *significant* when its
eta^2 exceeds the 95th percentile of the permutation distribution of the MAXIMUM eta^2 over all
heads (family-wise error 5% over the L*H tests, Westfall-Young max-T), and a *specialist* when
it is significant and eta^2 >= `min_effect` (default 0.1): with thousands of windows a
negligible difference is significant, so the count needs an effect size to mean anything.

Domain classification. Nearest centroid (Euclidean, raw routing weights) with leave-one-out
over all windows: window i is assigned to the closest domain centroid computed without it.
Nulls: the same accuracy with permuted labels (mean, 95th percentile) and the majority-class
rate. Controls (the bar trained routing has to clear, since token statistics differ between
domains and any pooled summary of them classifies): the same classifier on the routing vectors
of the untrained routed model (the training seed's initialisation), and on the baseline's
residual stream (every block's output, mean-pooled per window, randomly projected to L*H*K
features).

Caveat: windows of one domain are consecutive chunks of the same documents, so they are not
independent; permutation nulls assume exchangeability and are therefore optimistic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dirroute_jax.analysis import plots, verdicts
from dirroute_jax.analysis import result as result_lib
from dirroute_jax.analysis.load import Workdir, as_workdir
from dirroute_jax.analysis.markdown import fmt, table
from dirroute_jax.analysis.verdicts import yes_no
from dirroute_jax.model.transformer import forward, init_params

PAPER = {
  "domain_variance_layer0": 0.070,
  "domain_variance_layer9": 0.00055,
  "specialists_layer0": 10,
  "specialists_layer9": 0,
  "classification": "23/24",
}


@dataclasses.dataclass(frozen=True)
class Specialists:
  """Heads whose routing separates the domains (`specialists`: criterion in `criterion`)."""

  per_layer: list[int]
  significant_per_layer: list[int]
  heads: list[tuple[int, int]]  # (layer, head) of every specialist
  eta2: list[list[float]]  # L x H
  p_fwer: list[list[float]]  # L x H
  threshold: float
  null_max_eta2_mean: float
  criterion: str
  expected_false_specialists_under_null: str


@dataclasses.dataclass(frozen=True)
class Classification:
  """Leave-one-out nearest-centroid domain classification from routing vectors."""

  accuracy: float
  correct: int
  total: int
  null_mean: float
  null_p95: float
  majority_rate: float
  balanced_accuracy: float
  balanced_null_mean: float
  balanced_null_p95: float
  chance_uniform: float
  confusion: list[list[int]]  # [true][predicted]
  # The same classifier on an untrained router's / the baseline's features; older reports
  # have none.
  controls: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RoutedRegimes:
  num_windows: int
  windows_per_domain: dict[str, int]
  domain_variance_per_layer: list[float]
  domain_variance_null_mean: list[float]
  domain_variance_null_p95: list[float]
  layer0_over_last_layer: float  # inf where the last layer's variance is 0
  specialists: Specialists
  classification: Classification


@dataclasses.dataclass(frozen=True)
class Regimes:
  """The regimes section: the routed model's routing across domains (the baseline has no
  routing weights: Skipped). With one held-out domain the whole section is Skipped."""

  protocol: dict[str, Any]
  paper: dict[str, Any]
  models: dict[str, RoutedRegimes | result_lib.Skipped]


# ---------------------------------------------------------------- pure statistics


def _onehot(y_N: np.ndarray, num_classes: int) -> np.ndarray:
  return (y_N[:, None] == np.arange(num_classes)[None, :]).astype(np.float64)


def class_means(X_NxF: np.ndarray, y_N: np.ndarray, num_classes: int) -> np.ndarray:
  """C x F per-class means (NaN for an empty class)."""
  onehot_NxC = _onehot(y_N, num_classes)
  with np.errstate(invalid="ignore", divide="ignore"):
    return (onehot_NxC.T @ X_NxF) / onehot_NxC.sum(0)[:, None]


def domain_variance(X_NxF, y_N, num_classes: int | None = None) -> np.ndarray:
  """(F,) variance across classes of the per-class means (classes present only)."""
  X, y = np.asarray(X_NxF, np.float64), np.asarray(y_N)
  C = int(num_classes or y.max() + 1)
  means_CxF = class_means(X, y, C)
  return np.nanvar(means_CxF[np.bincount(y, minlength=C) > 0], axis=0)


def loo_nearest_centroid_predict(X_NxF, y_N) -> np.ndarray:
  """Leave-one-out nearest-centroid predictions (N,).

  Removing x_i from its own class c (n_c members) moves that centroid to (S_c - x_i)/(n_c - 1),
  and ||x_i - that||^2 = (n_c / (n_c - 1))^2 ||x_i - mean_c||^2, so no loop over i is needed.
  A point alone in its class has no own centroid (distance inf).
  """
  X, y = np.asarray(X_NxF, np.float64), np.asarray(y_N)
  C = int(y.max() + 1)
  n_C = np.bincount(y, minlength=C).astype(np.float64)
  means_CxF = np.nan_to_num(class_means(X, y, C))
  d2_NxC = (X * X).sum(1)[:, None] - 2 * X @ means_CxF.T + (means_CxF**2).sum(1)[None, :]
  d2_NxC[:, n_C == 0] = np.inf
  n_own_N, rows = n_C[y], np.arange(len(y))
  scale_N = (n_own_N / np.maximum(n_own_N - 1, 1)) ** 2
  d2_NxC[rows, y] = np.where(n_own_N > 1, d2_NxC[rows, y] * scale_N, np.inf)
  return np.argmin(d2_NxC, axis=1)


def nearest_centroid_accuracy(X_NxF, y_N) -> float:
  """Leave-one-out nearest-centroid accuracy."""
  return float(np.mean(loo_nearest_centroid_predict(X_NxF, y_N) == np.asarray(y_N)))


def balanced_accuracy(y_N, pred_N) -> float:
  """Mean per-class recall over the classes present in y_N (chance 1 / #classes)."""
  y, pred = np.asarray(y_N), np.asarray(pred_N)
  return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def permutation_null(
  stat: Callable[[np.ndarray], np.ndarray], y_N, permutations: int, seed: int = 0
) -> np.ndarray:
  """`stat(y_perm)` for `permutations` random permutations of the labels, stacked."""
  rng = np.random.default_rng(seed)
  y = np.asarray(y_N)
  return np.stack([np.asarray(stat(rng.permutation(y))) for _ in range(permutations)])


def eta_squared(X_NxF, y_N, groups_F=None, num_classes: int | None = None) -> np.ndarray:
  """(G,) between-class share of the total sum of squares, features pooled per group.

  `groups_F` gives each feature's group id 0..G-1 (default: every feature its own group).
  A group with no variation at all has eta^2 = 0.
  """
  X, y = np.asarray(X_NxF, np.float64), np.asarray(y_N)
  F = X.shape[1]
  g_F = np.arange(F) if groups_F is None else np.asarray(groups_F)
  C = int(num_classes or y.max() + 1)
  onehot_NxC = _onehot(y, C)
  n_C = onehot_NxC.sum(0)
  centred = X - X.mean(0)
  sums_CxF = onehot_NxC.T @ centred
  with np.errstate(invalid="ignore", divide="ignore"):
    between_F = np.where(n_C[:, None] > 0, sums_CxF**2 / n_C[:, None], 0.0).sum(0)
  total_F = (centred**2).sum(0)
  G = int(g_F.max() + 1)
  between_G, total_G = np.bincount(g_F, between_F, G), np.bincount(g_F, total_F, G)
  return np.where(
    total_G > 1e-12 * max(1.0, total_G.max()), between_G / np.where(total_G > 0, total_G, 1.0), 0.0
  )


def specialists(
  X_NxF,
  y_N,
  *,
  groups_F=None,
  permutations: int = 1000,
  alpha: float = 0.05,
  min_effect: float = 0.1,
  seed: int = 0,
) -> dict:
  """Units (feature groups, e.g. heads) whose features depend on the class, vs a permutation null.

  Criterion (module docstring): eta^2 above the (1 - alpha) quantile of the permutation
  distribution of max-over-units eta^2 (family-wise error alpha), and eta^2 >= min_effect.

  Returns a dict: eta2 (G,), p_fwer (G,) family-wise adjusted p-values, p_unit (G,) uncorrected
  per-unit permutation p-values, threshold, null_max_mean, significant (G, bool),
  specialist (G, bool), criterion (text).
  """
  X, y = np.asarray(X_NxF, np.float64), np.asarray(y_N)
  C = int(y.max() + 1)
  eta2_G = eta_squared(X, y, groups_F, C)
  null_PxG = permutation_null(lambda yp: eta_squared(X, yp, groups_F, C), y, permutations, seed)
  max_P = null_PxG.max(axis=1)
  threshold = float(np.quantile(max_P, 1.0 - alpha))
  # (1 + #{null >= observed}) / (1 + P): the standard permutation p-value, never 0.
  p_fwer = (1 + (max_P[:, None] >= eta2_G[None, :] - 1e-12).sum(0)) / (1 + permutations)
  p_unit = (1 + (null_PxG >= eta2_G[None, :] - 1e-12).sum(0)) / (1 + permutations)
  significant = eta2_G > threshold
  return {
    "eta2": eta2_G.tolist(),
    "p_fwer": p_fwer.tolist(),
    "p_unit": p_unit.tolist(),
    "threshold": threshold,
    "null_max_mean": float(max_P.mean()),
    "significant": significant.tolist(),
    "specialist": (significant & (eta2_G >= min_effect)).tolist(),
    "criterion": f"eta^2 > {1 - alpha:.0%} quantile of the label-permutation null of the "
    f"max eta^2 over units ({permutations} permutations, FWER {alpha}) and "
    f"eta^2 >= {min_effect}",
  }


# ---------------------------------------------------------------- the analysis


def _window_means(model, params, batches, capture: tuple[str, ...]):
  """(X_NxF, y_N): per held-out window, the mean over real input positions of the captured
  activations (each B x T x ..., flattened and concatenated in `capture` order), and domains."""

  @jax.jit
  def window_means(p, tokens_BxT, weights_BxT):
    _, acts = forward(model, p, tokens_BxT, capture=capture)
    w_BxT = weights_BxT.astype(jnp.float32)
    means = []
    for name in capture:
      a_BxTxF = acts[name].reshape(acts[name].shape[:2] + (-1,)).astype(jnp.float32)
      s_BxF = jnp.einsum("btf,bt->bf", a_BxTxF, w_BxT)
      means.append(s_BxF / jnp.maximum(w_BxT.sum(1), 1.0)[:, None])
    return jnp.concatenate(means, axis=1)

  xs, ys = [], []
  for batch in batches:
    keep_B = (batch["domain"] >= 0) & (batch["weights"].sum(1) > 0)
    if not keep_B.any():
      continue
    x_BxF = np.asarray(window_means(params, batch["inputs"], batch["weights"]))
    xs.append(x_BxF[keep_B])
    ys.append(batch["domain"][keep_B])
  if not xs:
    raise ValueError("no held-out windows with real tokens")
  return np.concatenate(xs).astype(np.float64), np.concatenate(ys).astype(np.int64)


def routing_vectors(
  run: Workdir, num_batches: int | None = None, params=None
) -> tuple[np.ndarray, np.ndarray]:
  """(X_NxF, y_N): per-window mean routing weights (F = L*H*K) of the routed model (or of the
  given `params` for it) and domains."""
  model = run.models["routed"]
  capture = tuple(f"blocks.{l}.attn.r" for l in range(model.cfg.num_layers))
  return _window_means(
    model,
    run.params["routed"] if params is None else params,
    run.data.eval_batches(num_batches),
    capture,
  )


def baseline_features(
  run: Workdir, dim: int, num_batches: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """(X_NxF, y_N): the baseline's residual stream leaving every block, mean-pooled per window
  and concatenated (L*D), projected by a fixed Gaussian matrix to `dim` features: what a
  classifier gets from a model without a router, at the routing vector's size."""
  model = run.models["baseline"]
  capture = tuple(f"blocks.{l}.resid_post" for l in range(model.cfg.num_layers))
  X_NxLD, y_N = _window_means(
    model, run.params["baseline"], run.data.eval_batches(num_batches), capture
  )
  proj_LDxF = np.random.default_rng(seed).standard_normal((X_NxLD.shape[1], dim))
  return X_NxLD @ proj_LDxF / np.sqrt(X_NxLD.shape[1]), y_N


def regimes(
  run,
  *,
  num_batches: int | None = None,
  permutations: int = 1000,
  seed: int = 0,
  alpha: float = 0.05,
  min_effect: float = 0.1,
) -> Regimes | result_lib.Skipped:
  """Domain dependence of the routed model's routing weights, each statistic beside its null.

  Args:
    run: a `Workdir` (or its path).
    num_batches: held-out batches to use (default all; eval batches cycle through the domains,
      so any prefix covers them all).
    permutations: label permutations for every null.
    seed: seed of the permutations.
    alpha, min_effect: the specialist criterion (module docstring).

  Returns:
    `Regimes` (the baseline Skipped), or Skipped with the reason when the held-out data has
    fewer than two domains. The routed model's: domain variance per layer beside its
    permutation null, specialist heads, and the domain classification with its nulls and
    controls.
  """
  run = as_workdir(run)
  cfg = run.models["routed"].cfg
  L, H, K = cfg.num_layers, cfg.num_heads, cfg.num_directions
  domains = list(run.data.domains)
  X_NxF, y_N = (
    routing_vectors(run, num_batches) if len(domains) > 1 else (None, np.zeros(0, np.int64))
  )
  present = [domains[d] for d in np.unique(y_N)]
  if len(present) < 2:  # one domain: every statistic would compare the domain with itself
    reason = (
      f"skipped: routing regimes compare domains, and the held-out data has "
      f"{len(present) or len(domains)} ({', '.join(present or domains)}). Label "
      "domains with `domain=glob` entries in data.files (or data.domain_key, or "
      "`domain=name` in data.tfds_name); see README, Data."
    )
    return result_lib.Skipped(reason)
  C = len(domains)

  def layer_var(y):
    return domain_variance(X_NxF, y, C).reshape(L, H * K).mean(1)

  var_L = layer_var(y_N)
  var_null_PxL = permutation_null(layer_var, y_N, permutations, seed)

  spec = specialists(
    X_NxF,
    y_N,
    groups_F=np.arange(L * H * K) // K,
    permutations=permutations,
    alpha=alpha,
    min_effect=min_effect,
    seed=seed + 1,
  )
  sig_LxH = np.array(spec["significant"]).reshape(L, H)
  spec_LxH = np.array(spec["specialist"]).reshape(L, H)

  pred_N = loo_nearest_centroid_predict(X_NxF, y_N)
  # Controls: the same classifier on an untrained routed model's routing vectors (same init
  # seed as training) and on the baseline's projected residuals. Trained routing must beat
  # both to say that training put domain information into the router.
  untrained = init_params(run.models["routed"], jax.random.key(int(run.cfg.seed)))
  X_untrained, y_untrained = routing_vectors(run, num_batches, params=untrained)
  controls = {"untrained_routing": nearest_centroid_accuracy(X_untrained, y_untrained)}
  if "baseline" in run.models:
    X_base, y_base = baseline_features(run, X_NxF.shape[1], num_batches, seed)
    controls["baseline_features"] = nearest_centroid_accuracy(X_base, y_base)
  confusion_CxC = np.zeros((C, C), int)
  np.add.at(confusion_CxC, (y_N, pred_N), 1)

  def both_accuracies(y):
    pred = loo_nearest_centroid_predict(X_NxF, y)
    return [np.mean(pred == y), balanced_accuracy(y, pred)]

  acc_null_Px2 = permutation_null(both_accuracies, y_N, permutations, seed + 2)
  counts_C = np.bincount(y_N, minlength=C)

  routed = RoutedRegimes(
    num_windows=int(len(y_N)),
    windows_per_domain={d: int(n) for d, n in zip(domains, counts_C)},
    domain_variance_per_layer=var_L.tolist(),
    domain_variance_null_mean=var_null_PxL.mean(0).tolist(),
    domain_variance_null_p95=np.quantile(var_null_PxL, 0.95, axis=0).tolist(),
    layer0_over_last_layer=float(var_L[0] / var_L[-1]) if var_L[-1] > 0 else float("inf"),
    specialists=Specialists(
      per_layer=spec_LxH.sum(1).tolist(),
      significant_per_layer=sig_LxH.sum(1).tolist(),
      heads=[(int(l), int(h)) for l, h in zip(*np.nonzero(spec_LxH))],
      eta2=np.array(spec["eta2"]).reshape(L, H).tolist(),
      p_fwer=np.array(spec["p_fwer"]).reshape(L, H).tolist(),
      threshold=float(spec["threshold"]),
      null_max_eta2_mean=float(spec["null_max_mean"]),
      criterion=spec["criterion"],
      expected_false_specialists_under_null=f"<= {alpha} heads in total (FWER)",
    ),
    classification=Classification(
      accuracy=float(np.mean(pred_N == y_N)),
      correct=int(np.sum(pred_N == y_N)),
      total=int(len(y_N)),
      null_mean=float(acc_null_Px2[:, 0].mean()),
      null_p95=float(np.quantile(acc_null_Px2[:, 0], 0.95)),
      majority_rate=float(counts_C.max() / counts_C.sum()),
      balanced_accuracy=float(balanced_accuracy(y_N, pred_N)),
      balanced_null_mean=float(acc_null_Px2[:, 1].mean()),
      balanced_null_p95=float(np.quantile(acc_null_Px2[:, 1], 0.95)),
      chance_uniform=1.0 / int((counts_C > 0).sum()),
      confusion=confusion_CxC.tolist(),
      controls={k: float(v) for k, v in controls.items()},
    ),
  )
  return Regimes(
    protocol={
      "routing_vector": "per window: mean of blocks.{l}.attn.r over input positions with "
      "weight 1; features ordered (layer, head, direction)",
      "domain_variance": "variance across domains of per-domain feature means, averaged "
      "over the layer's heads and directions",
      "specialist": spec["criterion"],
      "classification": "leave-one-out nearest centroid, Euclidean on raw weights",
      "null": f"label permutations ({permutations}), seed {seed}",
      "caveat": "windows of a domain come from the same documents (not independent): "
      "permutation nulls are optimistic",
      "domains": domains,
      "num_batches": num_batches,
      "L_H_K": [L, H, K],
    },
    paper=dict(PAPER),
    models={
      "routed": routed,
      "baseline": result_lib.Skipped("n/a (no routing weights: the baseline has no router)"),
    },
  )


# Why "accuracy above every control" cannot hold here: no test on dependent windows.
CLASSIFICATION_GATE = (
  "above every control, but no interval accounts for windows that are not independent "
  "(consecutive windows of the same documents)"
)


def claim_rows(r: Regimes, report: dict) -> verdicts.Rows:
  """The claims this section tests (analysis/claims.py):

  variance        layer 0 above its permutation null's p95 and > 10x the last layer's
                  (specialists shown, not scored).
  classification  accuracy above the permutation p95, the majority class, an untrained
                  router's and the baseline's projected residuals' (the controls). Never
                  "holds" here: the windows are not independent (consecutive windows of the
                  same documents), and the result has no interval that accounts for it, so
                  "accuracy > bar" is not a test (CLASSIFICATION_GATE: "uninformative");
                  at or below the bar, "does not hold".
  """
  del report  # every number is this section's
  reg = result_lib.model(r)
  if not reg:
    return {}
  out = {}
  var = reg.domain_variance_per_layer
  var_p95 = reg.domain_variance_null_p95
  spec = reg.specialists.per_layer
  ratio = var[0] / max(var[-1], 1e-30)
  out["variance"] = (
    f"{fmt(var[0])} vs {fmt(var[-1])} ({ratio:.2g}x; layer-0 null p95 "
    f"{fmt(var_p95[0])}); specialists {spec[0]} vs {spec[-1]} (not "
    "scored)",
    yes_no(var[0] > var_p95[0] and ratio > 10),
  )
  c = reg.classification
  controls = c.controls
  bar = max([c.null_p95, c.majority_rate, *controls.values()])
  out["classification"] = (
    f"{c.correct}/{c.total} = {100 * c.accuracy:.0f}% (null p95 "
    f"{100 * c.null_p95:.0f}%, majority {100 * c.majority_rate:.0f}%"
    + "".join(f", {k.replace('_', ' ')} {100 * v:.0f}%" for k, v in controls.items())
    + ")",
    verdicts.uninformative(CLASSIFICATION_GATE)
    if controls and c.accuracy > bar
    else verdicts.uninformative("no untrained-router or baseline control (older report)")
    if not controls
    else verdicts.DOES_NOT_HOLD,
  )
  return out


def markdown(r: Regimes) -> str:
  routed, paper = r.models["routed"], r.paper
  var_L = routed.domain_variance_per_layer
  rows = [
    [f"layer {l}", var_L[l], routed.domain_variance_null_p95[l], routed.specialists.per_layer[l]]
    for l in range(len(var_L))
  ]
  c = routed.classification
  out = [
    table(
      [
        "layer",
        "routing variance across domains",
        "null p95 (shuffled labels)",
        "specialist heads",
      ],
      rows,
    ),
    "",
    f"Paper: variance {paper['domain_variance_layer0']} (layer 0) vs "
    f"{paper['domain_variance_layer9']} (layer 9); specialists "
    f"{paper['specialists_layer0']} vs {paper['specialists_layer9']}. Specialist "
    f"criterion: {routed.specialists.criterion}",
    "",
    table(
      [
        "nearest-centroid domain classification",
        "paper",
        "ours",
        "null mean",
        "null p95",
        "majority class",
      ],
      [
        [
          "accuracy",
          paper["classification"],
          f"{c.correct}/{c.total} = {fmt(c.accuracy)}",
          c.null_mean,
          c.null_p95,
          c.majority_rate,
        ],
        *[[f"control: {k.replace('_', ' ')}", "", v, "", "", ""] for k, v in c.controls.items()],
        [
          "balanced accuracy",
          "",
          c.balanced_accuracy,
          c.balanced_null_mean,
          c.balanced_null_p95,
          c.chance_uniform,
        ],
      ],
    ),
    "",
    f"Caveat: {r.protocol['caveat']}.",
  ]
  return "\n".join(out)


def figures(r: Regimes) -> dict:
  """Routing-weight variance across domains per layer, beside the shuffled-label null."""
  routed = result_lib.model(r)
  if routed is None:
    return {}
  var_L = np.asarray(routed.domain_variance_per_layer)
  fig, ax = plots.plt.subplots(figsize=(5, 3.2))
  ax.semilogy(var_L, "o-", label="routed: variance of domain means")
  ax.semilogy(
    np.asarray(routed.domain_variance_null_p95), "k--", label="null p95 (shuffled domain labels)"
  )
  plots.integer_ticks(ax.xaxis, len(var_L))
  ax.set_xlabel("layer")
  ax.set_ylabel("routing-weight variance across domains")
  ax.set_title("Routing regimes: does routing depend on the domain?")
  ax.legend(fontsize=8)
  return {"regimes_variance": fig}
