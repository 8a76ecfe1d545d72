"""PNG figures for the report. Each plot draws one claim beside its null or control, so a
figure never shows the routed model alone. Keys start with the report section they belong to.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only; no display on a training host
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402


def make_figures(results: dict) -> dict:
  """{key: matplotlib Figure} for every section of `results` (a report.json) that has a plot;
  the caller closes them."""
  figures = {}
  for key, fn in _PLOTS.items():
    section = key.split("_")[0]
    if section in results and isinstance(results[section], dict):
      fig = fn(results[section])
      if fig is not None:
        figures[key] = fig
  return figures


def make_plots(results: dict, out_dir: str) -> dict[str, str]:
  """Writes OUT_DIR/<key>.png for each of make_figures(results); returns {key: path}."""
  paths = {}
  for key, fig in make_figures(results).items():
    paths[key] = os.path.join(out_dir, f"{key}.png")
    fig.savefig(paths[key], dpi=110, bbox_inches="tight")
    plt.close(fig)
  return paths


def _integer_ticks(axis, n: int) -> None:
  """Ticks of a layer / head / k axis (0..n-1): every integer when there are few, else integers
  only (matplotlib's default puts ticks at 0.5 steps on a short axis)."""
  if n <= 16:
    axis.set_ticks(range(n))
  else:
    axis.set_major_locator(MaxNLocator(integer=True))


def _legend_outside(ax, **kwargs) -> None:
  """The legend to the right of the axes, where it cannot hide a point (savefig's tight bbox
  keeps it in the file)."""
  ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def _routed(section: dict):
  routed = section.get("models", {}).get("routed")
  return routed if isinstance(routed, dict) else None


def _ablation_layers(r: dict):
  per_layer = {name: m.get("per_layer_delta_ppl") for name, m in r.get("models", {}).items()
               if isinstance(m, dict) and m.get("per_layer_delta_ppl") is not None}
  if not per_layer:
    return None
  fig, ax = plt.subplots(figsize=(6, 3.2))
  width = 0.8 / len(per_layer)
  for i, (name, deltas) in enumerate(per_layer.items()):
    x = np.arange(len(deltas)) + i * width
    ax.bar(x, deltas, width, label=f"{name}" + (" (control)" if name == "baseline" else ""))
  ax.axhline(0, color="k", lw=0.6)
  num_layers = len(next(iter(per_layer.values())))
  ax.set_xticks(np.arange(num_layers) + 0.4 - width / 2, [str(l) for l in range(num_layers)])
  ax.set_xlabel("layer whose routing is switched off (the baseline has none: its bars are 0)")
  ax.set_ylabel("Δ held-out PPL")
  ax.set_title("Single-layer routing knockout: Δ perplexity per layer")
  ax.legend()
  return fig


def _induction_heads(r: dict):
  models = {n: m for n, m in r.get("models", {}).items() if isinstance(m, dict)}
  if not models:
    return None
  # Constrained layout and one shared "layer" label: the second panel's label used to sit
  # on the first panel's tick labels.
  fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3), sharey=True,
                           layout="constrained")
  axes = np.atleast_1d(axes)
  vmax = max(float(np.max(m["induction_scores"])) for m in models.values())
  for ax, (name, m) in zip(axes, models.items()):
    scores_LxH = np.asarray(m["induction_scores"])
    im = ax.imshow(scores_LxH, vmin=0, vmax=vmax, cmap="viridis")
    ax.set_title(f"{name}: induction score")
    ax.set_xlabel("head")
    _integer_ticks(ax.xaxis, scores_LxH.shape[1])
    _integer_ticks(ax.yaxis, scores_LxH.shape[0])
  axes[0].set_ylabel("layer")
  fig.colorbar(im, ax=list(axes), shrink=0.8,
               label=f"uniform-attention null = {r['null']['uniform_attention_induction_score']:.3f}")
  return fig


def _regimes_variance(r: dict):
  routed = _routed(r)
  if routed is None:
    return None
  var_L = np.asarray(routed["domain_variance_per_layer"])
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.semilogy(var_L, "o-", label="routed: variance of domain means")
  ax.semilogy(np.asarray(routed["domain_variance_null_p95"]), "k--",
              label="null p95 (shuffled domain labels)")
  _integer_ticks(ax.xaxis, len(var_L))
  ax.set_xlabel("layer")
  ax.set_ylabel("routing-weight variance across domains")
  ax.set_title("Routing regimes: does routing depend on the domain?")
  ax.legend(fontsize=8)
  return fig


def _directions_cosine(r: dict):
  routed = _routed(r)
  if routed is None:
    return None
  cos = routed["cosine"]
  fig, ax = plt.subplots(figsize=(4.2, 3.5))
  abs_mean_LxL = np.asarray(cos["abs_mean"])
  im = ax.imshow(abs_mean_LxL, cmap="magma", vmin=0)
  ax.set_xlabel("layer")
  ax.set_ylabel("layer")
  _integer_ticks(ax.xaxis, abs_mean_LxL.shape[1])
  _integer_ticks(ax.yaxis, abs_mean_LxL.shape[0])
  ax.set_title(f"mean |cos| between directions\n(random null {cos['null']['analytic_abs_cos_mean']:.3f})")
  fig.colorbar(im, ax=ax, shrink=0.8)
  return fig


def _factual_dla(r: dict):
  parts = ["embedding", "heads_raw", "routing_delta", "mlps"]
  series = {"paper (' Paris', 433M)": [r["paper"]["dla_paris"][k] for k in parts]}
  for name, m in r.get("models", {}).items():
    series[f"{name} (mean, minus mean-logit null)"] = [
        m["summary"]["mean_dla_relative_to_mean_logit"][k] for k in parts]
  fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3), sharey=False)
  for ax, (name, values) in zip(np.atleast_1d(axes), series.items()):
    ax.bar(range(len(parts)), values, color=["C0", "C1", "C3", "C2"])
    ax.set_xticks(range(len(parts)), ["embed", "heads", "routing Δ", "MLPs"])
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(name, fontsize=9)
  axes = np.atleast_1d(axes)
  axes[0].set_ylabel("contribution to the target logit")
  fig.suptitle("Direct logit attribution of the factual target", y=1.04)
  return fig


def _spectral_cascade(r: dict):
  """Per-layer mean skew (routing) effective rank, offset-0 kernel, beside the random null."""
  models = {n: m for n, m in r.get("models", {}).items() if isinstance(m, dict)}
  if not models:
    return None
  null = r["null"]["offset0"]["skew_erank"]
  fig, ax = plt.subplots(figsize=(5.5, 3.4))
  for name, m in models.items():
    erank_L = np.asarray(m["offset0"]["per_layer"]["skew_erank"])
    ax.plot(np.arange(len(erank_L)), erank_L, "o-", label=name)
  ax.axhline(null["mean"], color="k", ls="--",
             label=f"null: random W_Q, W_K ({null['p05']:.1f}-{null['p95']:.1f} p05-p95)")
  ax.axhline(r["null"]["max_rank"], color="gray", ls=":", label="maximum rank min(D, 2 Dh)")
  ax.plot([0], [r["paper"]["skew_erank_layer1"]], "r*", ms=10, clip_on=False, zorder=3,
          label="paper: first layer (7M-355M models)")  # near 0: not cut by the axis
  ax.set_ylim(bottom=0)
  _integer_ticks(ax.xaxis, len(erank_L))
  ax.set_xlabel("layer")
  ax.set_ylabel("skew-part effective rank (mean over heads)")
  ax.set_title("Spectral cascade: routing rank of W_Q W_K^T per layer")
  _legend_outside(ax, fontsize=7)  # inside, it covered the paper's point at rank ~2
  return fig


def _linearise_ppl(r: dict):
  fig, ax = plt.subplots(figsize=(5, 3.2))
  num_k = 0
  for name, m in r.get("models", {}).items():
    increase_K = 100 * np.asarray(m["relative_increase_by_k"])  # k = 0..L
    num_k = max(num_k, len(increase_K))
    ax.plot(np.arange(len(increase_K)), increase_K, "o-",
            label=f"{name} ({m['attention']} attention)")
  _integer_ticks(ax.xaxis, num_k)
  ax.axhline(5, color="k", ls="--", lw=0.8, label="paper's S-D bound: +5%")
  ax.set_xlabel("first k layers switched to ELU+1 linear attention (no retraining)")
  ax.set_ylabel("held-out PPL increase (%)")
  worst = max(max(m["relative_increase_by_k"]) for m in r["models"].values())
  if worst > 2.0:  # a collapse (> +200%) would flatten everything else on a linear axis
    ax.set_yscale("symlog", linthresh=10)
  ax.set_title("Linearisation: PPL cost vs k")
  ax.legend(fontsize=8)
  return fig


_PLOTS = {
    "linearise_ppl": _linearise_ppl,
    "factual_dla": _factual_dla,
    "ablation_layers": _ablation_layers,
    "induction_heads": _induction_heads,
    "regimes_variance": _regimes_variance,
    "directions_cosine": _directions_cosine,
    "spectral_cascade": _spectral_cascade,
}
