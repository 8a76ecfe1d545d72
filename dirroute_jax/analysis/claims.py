"""The paper's claims (METHOD.md) checked against two interpretability reports: one for a pair
trained with the paper's `sequence_mean` router, one with the causal `causal_mean` router.

Each row: the claim, the paper's number, the row's control, ours under each pooling, and a
verdict (analysis/verdicts.py): "holds", "does not hold", "no difference (within +/-M)", or
"uninformative at this scale: <gate>", the gate saying why the row cannot be decided here (the
capability is at chance, too few layers for a trend or a location, a control the result does
not measure). No row can hold on the untrained pair alone: each "holds" also needs its control
(the `control` column), a model without the capability or the baseline, and each is tested to
return something else on such a model (tests/test_claims.py). The controls, row by row:

  ppl_gain, prefix     the baseline (the reduction is vs it) and the untrained pair's reduction
  ppl_conditions       none measured: the same-size knockout of another trained component is
                       missing, so the row is never "holds" (uninformative, control named)
  mean_routing         r fixed at its held-out mean (the same suppression, input-independent)
  layer_ko             chance, 1 of L; uninformative below 4 layers
  factual_off          the baseline's P(word); random held-out words are missing, so never
                       "holds"; all factual rows gated on real recall (median rank <= 10)
  dla, mover           the mean-logit null; every other head's knockout
  induction(_ko)       the baseline's accuracy, the first block, other heads' knockouts; gated
                       on induction above chance
  variance             the shuffled-label permutation null and the last layer
  classification       permutation null, majority class, an untrained router, the baseline's
                       residuals; never "holds" (windows are not independent, no interval)
  readout, cosine      random directions
  spectral             the baseline's slope with depth; uninformative below 3 layers

Each criterion is stated beside the code that computes its numbers, in the section's
`claim_rows` (analysis/report.py's SECTIONS):

  causal, prefix                          causality.claim_rows
  ppl_gain, ppl_conditions, mean_routing,
  layer_ko                                ablation.claim_rows
  factual_off, dla, mover                 factual.claim_rows
  induction, induction_ko                 induction.claim_rows
  variance, classification                regimes.claim_rows
  readout, cosine                         directions.claim_rows
  spectral                                spectral.claim_rows

This module only assembles the table: the claims' order and wording, the paper's numbers, the
controls, and the leak-vs-gain table. Magnitudes are not compared: our models are orders of
magnitude smaller than the paper's.
"""

from __future__ import annotations

from dirroute_jax.analysis import report as report_lib
from dirroute_jax.analysis.ablation import PAPER_WORST_LAYER_DEPTH, paper_layer
from dirroute_jax.analysis.markdown import table
from dirroute_jax.analysis.verdicts import (
  DOES_NOT_HOLD,
  HOLDS,
  NO,
  NO_DIFF,
  UNINFORMATIVE,
  YES,
  interval_verdict,
)
from dirroute_jax.analysis.verdicts import pct_ci as _pct_ci
from dirroute_jax.model.variants import PREFIX_ONLY as PREFIX

# The table's words and rules, where the sections' claim rows define them.
__all__ = [
  "CLAIMS",
  "claims_table",
  "leak_vs_gain",
  "HOLDS",
  "DOES_NOT_HOLD",
  "NO_DIFF",
  "UNINFORMATIVE",
  "YES",
  "NO",
  "interval_verdict",
  "paper_layer",
  "PAPER_WORST_LAYER_DEPTH",
]


def _rows_for(r: dict) -> dict[str, tuple[str, str | None]]:
  """{claim id: (our value as text, verdict)} for one report (stored or in memory); the
  verdict is one of analysis/verdicts.py's, or None (not a claim that can hold)."""
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


# Each row's control: what its criterion is measured against besides the untrained pair (the
# rows' `claim_rows` give the rules; "missing" names a control the results do not measure, and
# such a row cannot hold).
CONTROLS = {
  "causal": "-",
  "prefix": "baseline; untrained pair",
  "ppl_gain": "baseline; untrained pair; +/-1% margin",
  "ppl_conditions": "missing: same-size knockout of another trained component",
  "mean_routing": "r fixed at its held-out mean (input-independent)",
  "factual_off": "gate: median first-token rank <= 10; baseline P; missing: random held-out words",
  "dla": "gate: recall (as factual_off); mean-logit null",
  "mover": "gate: recall (as factual_off); every other head's knockout",
  "induction": "gate: accuracy >= 10x chance; baseline; first block",
  "induction_ko": "gate: as induction; median other single-head knockout",
  "layer_ko": "gate: >= 4 layers; chance 1 of L",
  "variance": "shuffled-label null; last layer",
  "classification": "null, majority, untrained router, baseline residuals; missing: "
  "a test for dependent windows",
  "readout": "random directions",
  "cosine": "random directions",
  "spectral": "gate: >= 3 layers; the baseline's slope",
}


def claims_table(reports: dict[str, dict]) -> str:
  """Markdown: one row per claim with its control, one (value, holds) column pair per
  report."""
  per = {name: _rows_for(r) for name, r in reports.items()}
  header = ["claim", "paper", "control"]
  for name in reports:
    header += [f"ours: {name}", "holds?"]
  rows = []
  for key, claim, paper in CLAIMS:
    row = [claim, paper, CONTROLS.get(key, "-")]
    for name in reports:
      value, holds = per[name].get(key, ("n/a", None))
      row += [value, "-" if holds is None else holds]
    rows.append(row)
  rows.append(
    ["downstream multiple-choice benchmarks", "no gain", "-"]
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
