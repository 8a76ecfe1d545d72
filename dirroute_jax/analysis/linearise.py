"""Linearisation (arXiv 2605.18826): replace softmax attention in the first k layers by ELU+1
linear attention, with the trained weights and no retraining, and measure held-out perplexity
against k for every model of the set (standard, routed, S-D).

The paper reports that linearising the first 7 layers of a 125M S-D model costs < 5% PPL while
standard attention collapses. The null is k = 0 (the model as trained); the control is the
standard (baseline) model under the same k.
"""

from __future__ import annotations

import math

import jax

from dirroute_jax.analysis import ablation
from dirroute_jax.analysis.load import as_workdir

PAPER = {"sd_first7_of_125M": "< 5% PPL increase", "standard": "collapses"}


def linearise(run, *, num_batches: int | None = None) -> dict:
  """{"models": {name: {"ppl_by_k": [k = 0..L], "relative_increase_by_k": [...]}}, ...}."""
  run = as_workdir(run)
  n = run.cfg.eval_batches if num_batches is None else num_batches
  batches = list(run.data.eval_batches(n))
  out = {"paper": PAPER, "num_batches": len(batches), "eval_stride": run.data.eval_stride(n),
         "models": {}}
  for name, model in run.models.items():
    ppl_k, no_interventions = [], ablation.complete(model.cfg)
    for k in range(model.cfg.num_layers + 1):
      loss = tokens = 0.0
      for b in batches:
        l_B, t_B = jax.device_get(ablation.loss_sums(
            model, run.params[name], b["inputs"], b["targets"], b["weights"],
            no_interventions, k))
        loss, tokens = loss + float(l_B.sum()), tokens + float(t_B.sum())
      ppl_k.append(math.exp(loss / tokens))
    out["models"][name] = {
        "attention": model.cfg.attention, "routing": bool(model.cfg.routing),
        "ppl_by_k": ppl_k, "relative_increase_by_k": [p / ppl_k[0] - 1 for p in ppl_k]}
  out["protocol"] = {
      "linear_attention": "phi(x) = elu(x) + 1 on queries and keys (for S-D: the query is "
                          "(S - D)^T h), causal, normalised by the row sum",
      "layers": "the first k layers linearised, k = 0 (as trained) .. L; no retraining",
      "ppl": "exp(token-weighted mean CE) over held-out eval batches",
      "checkpoint_step": int(run.step)}
  return out
