"""Direct logit attribution (DLA): which parts of the residual stream write a target's logit.

The paper decomposes the logit of " Paris" after "The capital of France is" into embedding
-0.12 / heads -4.94 / routing delta +25.57 / MLPs -3.81 (433M model): suppression, not the
heads' raw output, writes the answer. `factual.py` runs the prompts and calls this module for
each one; this module owns the decomposition, its average over prompts, and its table and
figure in the factual section of the report.

Standard linearisation of the final RMSNorm at one position: its 1/rms(x) is frozen at the
value of the real forward (capture `final_norm.scale`), so
    logit[target] = sum_parts part_D . (inv_rms * scale_D * E[target]_D)
exactly, with parts: embedding (= resid_pre of block 0), per layer and head `heads_raw`
(z_h @ W_O_h, the head before suppression), per layer and head `routing_delta`
((z_routed_h - z_h) @ W_O_h, what suppression changed; heads_raw + routing_delta = the
attention output), per layer `mlp`. Null: the same decomposition of the MEAN logit over the
vocabulary (`dla_mean_logit`): a part that moves every logit equally does not change P, so only
`dla` - `dla_mean_logit` matters for the prediction.
"""

from __future__ import annotations

import numpy as np

from dirroute_jax.analysis import plots
from dirroute_jax.analysis.markdown import table

# The parts the logit is split into (totals over layers and heads), in report order.
PARTS = ("embedding", "heads_raw", "routing_delta", "mlps")

# The paper's decomposition of " Paris" (433M model).
PAPER_PARIS = {"embedding": -0.12, "heads_raw": -4.94, "routing_delta": 25.57, "mlps": -3.81}

# The activations direct_logit_attribution reads (`forward(..., capture=CAPTURE)`).
CAPTURE = (
  "blocks.0.resid_pre",
  "blocks.*.attn.z",
  "blocks.*.attn.z_routed",
  "blocks.*.mlp.out",
  "final_norm.scale",
)


def direct_logit_attribution(model_cfg, params, acts: dict, pos: int, target: int) -> dict:
  """Decomposes logit[target] at `pos` of one sequence (activations without the batch axis).

  Returns {"dla": parts, "dla_mean_logit": the same parts for the mean logit (null)}, parts =
  {"embedding", "heads_raw", "routing_delta", "mlps" (totals), "sum", "per_layer": [{"heads_raw":
  [H], "routing_delta": [H], "mlp"}]}.
  """
  V = model_cfg.vocab_size
  f64 = lambda a: np.asarray(a, np.float64)
  E_VxD = f64(params["embed"]["embedding"])[:V]
  inv_rms = f64(acts["final_norm.scale"])[pos, 0]
  scale_D = f64(params["final_norm"]["scale"])
  out = {}
  for key, row_D in (("dla", E_VxD[target]), ("dla_mean_logit", E_VxD.mean(axis=0))):
    u_D = inv_rms * scale_D * row_D  # d logit / d (final residual), RMS frozen
    per_layer = []
    for l in range(model_cfg.num_layers):
      W_O_HxDhxD = f64(params[f"blocks_{l}"]["attn"]["out"]["kernel"])
      z_HxDh = f64(acts[f"blocks.{l}.attn.z"])[pos]
      zr_HxDh = f64(acts[f"blocks.{l}.attn.z_routed"])[pos]
      wu_HxDh = W_O_HxDhxD @ u_D
      per_layer.append(
        {
          "heads_raw": np.sum(z_HxDh * wu_HxDh, axis=1).tolist(),
          "routing_delta": np.sum((zr_HxDh - z_HxDh) * wu_HxDh, axis=1).tolist(),
          "mlp": float(f64(acts[f"blocks.{l}.mlp.out"])[pos] @ u_D),
        }
      )
    parts = {
      "embedding": float(f64(acts["blocks.0.resid_pre"])[pos] @ u_D),
      "heads_raw": float(sum(sum(p["heads_raw"]) for p in per_layer)),
      "routing_delta": float(sum(sum(p["routing_delta"]) for p in per_layer)),
      "mlps": float(sum(p["mlp"] for p in per_layer)),
    }
    parts["sum"] = sum(parts.values())
    parts["per_layer"] = per_layer
    out[key] = parts
  return out


def attribute(model_cfg, params, acts: dict, pos: int, target: int, logit: float) -> dict:
  """direct_logit_attribution, with the real logit and what the parts leave unexplained."""
  out = direct_logit_attribution(model_cfg, params, acts, pos, target)
  out["dla"]["logit"] = float(logit)
  out["dla"]["residual"] = out["dla"]["logit"] - out["dla"]["sum"]
  return out


def summarize(per_prompt: list[dict]) -> dict:
  """Means over prompts of each attribute() result (entries carrying "dla", "dla_mean_logit"):
  {"mean_dla", "mean_dla_mean_logit", "mean_dla_relative_to_mean_logit"}."""
  col = lambda f: [f(e) for e in per_prompt]
  parts = (*PARTS, "sum")
  out = {}
  for key in ("dla", "dla_mean_logit"):
    out[f"mean_{key}"] = {k: float(np.mean(col(lambda e: e[key][k]))) for k in parts}  # noqa: B023
  out["mean_dla"]["logit"] = float(np.mean(col(lambda e: e["dla"]["logit"])))
  out["mean_dla"]["max_abs_residual"] = float(np.max(np.abs(col(lambda e: e["dla"]["residual"]))))
  # What matters for P(target): each part's push on the target logit beyond the mean logit.
  out["mean_dla_relative_to_mean_logit"] = {
    k: out["mean_dla"][k] - out["mean_dla_mean_logit"][k] for k in parts
  }
  return out


def relative(summary) -> dict[str, float]:
  """A model's mean attribution minus the mean-logit null (from its factual.Summary)."""
  return summary.mean_dla_relative_to_mean_logit


def markdown(paper: dict, summaries: dict) -> str:
  """The table of the paper's parts beside each model's (`summaries`: {model: its
  factual.Summary}), raw and minus the null."""
  rows = [["paper (' Paris')"] + [paper["dla_paris"][k] for k in PARTS] + ["", ""]]
  for name, s in summaries.items():
    d, rel = s.mean_dla, relative(s)
    rows.append(
      [f"{name}: mean over prompts"] + [d[k] for k in PARTS] + [d["logit"], d["max_abs_residual"]]
    )
    rows.append([f"{name}: minus mean-logit null"] + [rel[k] for k in PARTS] + [rel["sum"], ""])
  return "\n".join(
    [
      "Direct logit attribution of the first target token's logit (final RMSNorm scale frozen "
      "from the forward; parts sum to the logit, residual shown):",
      "",
      table(
        ["", "embedding", "heads (raw)", "routing delta", "MLPs", "logit / sum", "max |residual|"],
        rows,
      ),
    ]
  )


def figure(paper: dict, summaries: dict):
  """The paper's parts beside each model's mean minus the null, one panel each."""
  series = {"paper (' Paris', 433M)": [paper["dla_paris"][k] for k in PARTS]}
  for name, s in summaries.items():
    series[f"{name} (mean, minus mean-logit null)"] = [relative(s)[k] for k in PARTS]
  fig, axes = plots.plt.subplots(1, len(series), figsize=(3.6 * len(series), 3), sharey=False)
  for ax, (name, values) in zip(np.atleast_1d(axes), series.items()):
    ax.bar(range(len(PARTS)), values, color=["C0", "C1", "C3", "C2"])
    ax.set_xticks(range(len(PARTS)), ["embed", "heads", "routing Δ", "MLPs"])
    ax.axhline(0, color="k", lw=0.6)
    ax.set_title(name, fontsize=9)
  axes = np.atleast_1d(axes)
  axes[0].set_ylabel("contribution to the target logit")
  fig.suptitle("Direct logit attribution of the factual target", y=1.04)
  return fig
