"""The paper's claims (METHOD.md) checked against two interpretability reports: one for a pair
trained with the paper's `sequence_mean` router, one with the causal `causal_mean` router.

Each row: the claim, the paper's number, ours under each pooling, and whether the qualitative
finding holds: "yes", "no", or "no difference" (a null result: the measurement does not
separate from its null or control). Every criterion can fail on an untrained model and on the
baseline; each is stated beside the code that computes its numbers, in the section's
`claim_rows` (analysis/report.py's SECTIONS):

  causal, prefix                          causality.claim_rows
  ppl_gain, ppl_conditions, mean_routing,
  layer_ko                                ablation.claim_rows
  factual_off, dla, mover                 factual.claim_rows
  induction, induction_ko                 induction.claim_rows
  variance, classification                regimes.claim_rows
  readout, cosine                         directions.claim_rows
  spectral                                spectral.claim_rows

This module only assembles the table: the claims' order and wording, the paper's numbers, and
the leak-vs-gain table. Magnitudes are not compared: our models are orders of magnitude
smaller than the paper's.
"""

from __future__ import annotations

from dirroute_jax.analysis import report as report_lib
from dirroute_jax.analysis.ablation import PAPER_WORST_LAYER_DEPTH, paper_layer
from dirroute_jax.analysis.markdown import table
from dirroute_jax.analysis.verdicts import NO, NO_DIFF, YES, interval_verdict
from dirroute_jax.analysis.verdicts import pct_ci as _pct_ci
from dirroute_jax.model.variants import PREFIX_ONLY as PREFIX

# The table's words and rules, where the sections' claim rows define them.
__all__ = [
  "CLAIMS",
  "claims_table",
  "leak_vs_gain",
  "YES",
  "NO",
  "NO_DIFF",
  "interval_verdict",
  "paper_layer",
  "PAPER_WORST_LAYER_DEPTH",
]


def _rows_for(r: dict) -> dict[str, tuple[str, str | None]]:
  """{claim id: (our value as text, holds?)} for one report (stored or in memory); holds? is
  "yes", "no", "no difference" or None (not a claim that can hold)."""
  r = report_lib.load_sections(r)
  out = {}
  for name, section in report_lib.SECTIONS.items():
    if name in r:
      out.update(section.claim_rows(r[name], r))
  return out


CLAIMS = (
  (
    "causal",
    "causality audit of the routed model",
    "not tested (the paper's router is non-causal)",
  ),
  (
    "prefix",
    "the paper's (sequence_mean) model evaluated causally: prefix-only routing, "
    "PPL reduction vs baseline",
    "not reported",
  ),
  (
    "ppl_gain",
    "PPL reduction routed vs baseline, 95% interval (overall, per domain)",
    "31-56% per domain",
  ),
  ("ppl_conditions", "routed PPL / all weights 0 / all 0.5", "~15 / ~7.7M / 5,284"),
  (
    "mean_routing",
    "input-dependent routing: PPL as trained / r at its mean / routing off",
    "not reported",
  ),
  (
    "factual_off",
    "factual recall (whole-word P) with routing disabled",
    "near-zero P on all 8 prompts",
  ),
  (
    "dla",
    "DLA embed / heads / routing delta / MLPs (minus mean-logit null)",
    "-0.12 / -4.94 / +25.57 / -3.81",
  ),
  ("mover", "mover-head knockout: P(target) ratio, against every other head's", "x1.07 (up)"),
  ("induction", "induction accuracy with / without routing", "93.4% / 0.0%"),
  ("induction_ko", "induction accuracy, strongest induction head knocked out", "98.6%"),
  (
    "layer_ko",
    "single-layer routing knockout: which layer dominates",
    "layer 9 of 12 +42.6 PPL; others small",
  ),
  (
    "variance",
    "routing variance across domains, first vs last layer (specialists shown, "
    "not scored: with this many windows nearly every head passes)",
    "0.070 vs 0.00055 (127x); 10 vs 0",
  ),
  (
    "classification",
    "nearest-centroid domain classification from routing vector, against "
    "an untrained router and the baseline's residuals",
    "23/24",
  ),
  (
    "readout",
    "direction readout through W_O and unembedding",
    "late layers -> function words/punctuation",
  ),
  ("cosine", "cross-layer cosine of directions", "off-diagonal mean ~0"),
  (
    "spectral",
    "QK^T routing (skew) effective rank with depth (arXiv 2605.18826)",
    "~2 at layer 1, growing with depth",
  ),
)


def claims_table(reports: dict[str, dict]) -> str:
  """Markdown: one row per claim, one (value, holds) column pair per report."""
  per = {name: _rows_for(r) for name, r in reports.items()}
  header = ["claim", "paper"]
  for name in reports:
    header += [f"ours: {name}", "holds?"]
  rows = []
  for key, claim, paper in CLAIMS:
    row = [claim, paper]
    for name in reports:
      value, holds = per[name].get(key, ("n/a", None))
      row += [value, "-" if holds is None else holds]
    rows.append(row)
  rows.append(
    ["downstream multiple-choice benchmarks", "no gain"]
    + ["not run (no benchmark data offline)", "-"] * len(reports)
  )
  return table(header, rows)


def leak_vs_gain(reports: dict[str, dict]) -> str:
  """Each report's PPL reduction vs baseline as trained beside, for a sequence_mean model, the
  same with prefix-only routing (the measured leak; `train.evaluate.evaluate_params`)."""
  rows = []
  for name, r in reports.items():
    r = report_lib.load_sections(r)
    caus, control = r["causality"], r["ablation"].control
    leak = caus.leak
    red = control.routed_ppl_reduction_vs_baseline["all"]
    ci = (control.routed_ppl_reduction_ci95 or {}).get("all")
    if leak is not None and leak.applies:
      prefix = _pct_ci(
        leak.reduction_vs_baseline[PREFIX]["all"], (leak.reduction_ci95 or {}).get(PREFIX)
      )
      ratio = f"{leak.prefix_over_as_trained['all']:.4f}"
    else:
      prefix, ratio = "= as trained (causal router)", "1"
    rows.append([name, caus.models["routed"].verdict, _pct_ci(red, ci), prefix, ratio])
  return table(
    [
      "pooling",
      "audit",
      "PPL reduction vs baseline, as trained [95% interval]",
      "... with prefix-only routing",
      "PPL prefix-only / as trained",
    ],
    rows,
  )
