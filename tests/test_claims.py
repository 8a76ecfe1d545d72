"""The claims table: filled from real reports, and every criterion able to fail.

The untrained-model tests build a workdir view with the trained fixture's data and config but
freshly initialised parameters (and the paper's sequence_mean router, so the leak row is
scored too): no "holds?" may read "holds" for a model that learned nothing. Beyond that, every
row that can hold is fed a baseline-like result or one without the capability (typed results
edited in memory) and must return something else, and each gate ("uninformative at this
scale") is tested with the reason it names.
"""

import copy
import dataclasses
import json
import os

import jax
import pytest

from dirroute_jax.analysis import claims
from dirroute_jax.analysis.load import load_workdir
from dirroute_jax.analysis.report import run_analyses
from dirroute_jax.model.transformer import build_model, init_params
from dirroute_jax.model.variants import PREFIX_ONLY as PREFIX
from dirroute_jax.model.variants import model_configs

# Fewer permutations / null draws than the defaults: the criteria, not the nulls' precision,
# are under test.
_FAST = {"regimes": {"permutations": 200}, "directions": {"null_draws": 50}}


@pytest.fixture(scope="module")
def trained_report(trained_workdir):
  return run_analyses(load_workdir(trained_workdir), log=lambda *a: None, options=_FAST)


@pytest.fixture(scope="module")
def untrained_rows(trained_workdir):
  run = load_workdir(trained_workdir)
  cfg = copy.deepcopy(run.cfg)
  cfg.model.pooling = "sequence_mean"
  models = {n: build_model(mc) for n, mc in model_configs(cfg).items()}
  key = jax.random.key(cfg.seed)
  untrained = dataclasses.replace(
    run, cfg=cfg, models=models, params={n: init_params(m, key) for n, m in models.items()}
  )
  untrained.__dict__["data"] = run.data  # same held-out split (cached_property slot)
  report = run_analyses(untrained, log=lambda *a: None, options=_FAST)
  return claims._rows_for(report)


@pytest.mark.slow
def test_claims_table_from_reports(trained_report):
  md = claims.claims_table({"causal_mean": trained_report, "again": trained_report})
  lines = md.splitlines()
  assert len(lines) == 2 + len(claims.CLAIMS) + 1
  for line in lines[2:-1]:
    assert "n/a" not in line, line
  assert "CAUSAL" in md
  leak = claims.leak_vs_gain({"causal_mean": trained_report})
  assert "| causal_mean | CAUSAL |" in leak and "= as trained (causal router)" in leak


@pytest.mark.slow
@pytest.mark.parametrize("key", [k for k, _, _ in claims.CLAIMS if k != "causal"])
def test_every_criterion_fails_on_an_untrained_model(untrained_rows, key):
  value, holds = untrained_rows[key]
  assert holds != claims.HOLDS, (key, value, holds)


@pytest.mark.slow
def test_untrained_sequence_mean_leak_is_measured(untrained_rows):
  assert untrained_rows["causal"][0] == "LEAK"
  assert "prefix-only" in untrained_rows["prefix"][0]


def test_interval_verdict():
  assert claims.interval_verdict(0.01, 0.05) == "holds"
  assert claims.interval_verdict(-0.05, -0.01) == "does not hold"
  # Containing the null: "no difference" only inside the +/-1% margin, else uninformative.
  assert claims.interval_verdict(-0.005, 0.004) == "no difference (within +/-1%)"
  assert claims.interval_verdict(-0.01, 0.05).startswith("uninformative at this scale: ")
  assert "wider than +/-1%" in claims.interval_verdict(-0.01, 0.05)
  assert claims.interval_verdict(float("nan"), 0.1) == "uninformative at this scale: no interval"
  # Above zero but not above the untrained pair's reduction: not "holds".
  assert claims.interval_verdict(0.01, 0.05, null=0.03) != "holds"


def test_paper_layer_is_the_relative_depth():
  assert claims.paper_layer(12) == 9 and claims.paper_layer(2) == 1
  assert claims.paper_layer(4) == 3 and claims.paper_layer(1) == 0


def test_claims_table_of_committed_reports_is_unchanged():
  """claims.py reads reports back from report.json: the table of the committed small reports
  (with the at-chance count those reports predate set to 0) is a persisted format."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  reports = {}
  for pooling in ("causal_mean", "sequence_mean"):
    with open(os.path.join(repo, "tests", "golden", "reports", f"small_{pooling}.json")) as f:
      r = json.load(f)
    for m in r["factual"]["models"].values():
      for cond in ("as_trained", "routing_off"):
        m["summary"][cond].setdefault("num_at_chance", 0)
    reports[pooling] = r
  with open(os.path.join(repo, "tests", "golden", "claims_small.md")) as f:
    assert claims.claims_table(reports) + "\n" == f.read()


def test_claims_md_of_committed_seed_reports_is_unchanged():
  """results/seeds/claims.md, rebuilt from the committed report.json files it was made from
  (`experiments.seeds.write_claims`): each section's claim rows read the typed results."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  reports = {}
  for pooling in ("sequence_mean", "causal_mean"):
    with open(
      os.path.join(repo, "results", "seeds", pooling, "seed_0", "report", "report.json")
    ) as f:
      reports[pooling] = json.load(f)
  text = "Seed 0.\n\n" + claims.claims_table(reports) + "\n\n" + claims.leak_vs_gain(reports) + "\n"
  with open(os.path.join(repo, "results", "seeds", "claims.md")) as f:
    assert text == f.read()


# --- Every row that can say "holds" returns something else on a baseline-like model or one
# without the capability, and every gate says "uninformative" with its reason (issue 24).
#
# The rows are fed typed results: the committed seed-0 report (2 layers, no recall, no
# induction) and the small golden report (4 layers), edited in memory with
# dataclasses.replace.

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _typed(path: str) -> dict:
  from dirroute_jax.analysis import report as report_lib

  with open(os.path.join(_REPO, path)) as f:
    r = json.load(f)
  for m in r["factual"]["models"].values():
    for cond in ("as_trained", "routing_off"):
      m["summary"][cond].setdefault("num_at_chance", 0)
  return report_lib.load_sections(r)


@pytest.fixture(scope="module")
def seed_report():
  """sequence_mean, seed 0: 2 layers, factual P ~1e-4 (median rank 154), induction at chance."""
  return _typed("results/seeds/sequence_mean/seed_0/report/report.json")


@pytest.fixture(scope="module")
def seed_report_causal():
  return _typed("results/seeds/causal_mean/seed_0/report/report.json")


@pytest.fixture(scope="module")
def small_report():
  """The small golden report: 4 layers."""
  return _typed("tests/golden/reports/small_causal_mean.json")


def _rows(section: str, result, report: dict) -> dict:
  from dirroute_jax.analysis import report as report_lib

  return report_lib.SECTIONS[section].claim_rows(result, report)


def _with_model(result, name: str, **fields):
  m = dataclasses.replace(result.models[name], **fields)
  return dataclasses.replace(result, models={**result.models, name: m})


def _uninformative(verdict: str, *gate_words: str) -> bool:
  from dirroute_jax.analysis import verdicts

  ok = verdicts.is_uninformative(verdict) and len(verdict) > len(verdicts.UNINFORMATIVE) + 2
  return ok and all(w in verdict for w in gate_words)


def _vocabulary_ok(verdict) -> bool:
  return (
    verdict is None
    or verdict in (claims.HOLDS, claims.DOES_NOT_HOLD)
    or verdict.startswith("no difference (within ")
    or _uninformative(verdict)
  )


def test_every_verdict_is_in_the_vocabulary(seed_report, seed_report_causal, small_report):
  for r in (seed_report, seed_report_causal, small_report):
    for key, (value, verdict) in claims._rows_for(r).items():
      assert _vocabulary_ok(verdict), (key, value, verdict)


def test_every_claim_states_its_control():
  assert {k for k, _, _ in claims.CLAIMS} == set(claims.CONTROLS)
  md = claims.claims_table({"x": {}})
  assert md.splitlines()[0].startswith("| claim | paper | control |")


# spectral: comparative (the baseline's slope is the control); < 3 layers uninformative.


def _spectral_with(sp, name, slope, first=1.0, non_decreasing=True):
  m = sp.models[name]
  c = dataclasses.replace(
    m.offset0.cascade,
    slope_per_layer=slope,
    skew_erank_first_layer=first,
    skew_erank_last_layer=first + 3 * slope,
    non_decreasing=non_decreasing,
  )
  return _with_model(sp, name, offset0=dataclasses.replace(m.offset0, cascade=c))


def test_spectral_two_layers_is_uninformative(seed_report):
  # The committed run: both models grow (routed 0.95/layer, baseline 2.33), one comparison.
  value, verdict = _rows("spectral", seed_report["spectral"], seed_report)["spectral"]
  assert _uninformative(verdict, "2 layers", "one comparison"), verdict
  assert "vs baseline 2.333" in value


def test_spectral_holds_only_against_the_baseline(small_report):
  sp = _spectral_with(_spectral_with(small_report["spectral"], "routed", 2.0), "baseline", 0.5)
  assert _rows("spectral", sp, small_report)["spectral"][1] == claims.HOLDS
  # The baseline grows as fast (or faster): growth says nothing about routing.
  for base_slope in (2.0, 3.0):
    same = _spectral_with(sp, "baseline", base_slope)
    assert _rows("spectral", same, small_report)["spectral"][1] == claims.DOES_NOT_HOLD
  # No baseline measured: no control.
  no_base = dataclasses.replace(sp, models={"routed": sp.models["routed"]})
  assert _uninformative(_rows("spectral", no_base, small_report)["spectral"][1], "baseline")


# factual: gated on real recall (median first-token rank <= 10); factual_off never "holds"
# without the random-held-out-words control.


def _factual_with(fa, **summary_fields):
  m = fa.models["routed"]
  return _with_model(fa, "routed", summary=dataclasses.replace(m.summary, **summary_fields))


def _recalling(fa, on=0.3, off=0.01, rank=2):
  s = fa.models["routed"].summary
  return _factual_with(
    fa,
    as_trained=dataclasses.replace(s.as_trained, mean_p_target=on, median_rank=rank),
    routing_off=dataclasses.replace(s.routing_off, mean_p_target=off),
  )


def test_factual_rows_without_recall_are_uninformative(seed_report):
  # P ~1.5e-4, median rank 154: above "10 x uniform" on most prompts, but no recall.
  rows = _rows("factual", seed_report["factual"], seed_report)
  for key in ("factual_off", "dla", "mover"):
    assert _uninformative(rows[key][1], "no recall", "median first-token rank 154"), rows[key]


def test_factual_off_never_holds_without_the_word_control(seed_report):
  fa = _recalling(seed_report["factual"])  # real recall, 30x drop
  value, verdict = _rows("factual", fa, seed_report)["factual_off"]
  assert _uninformative(verdict, "random held-out words"), verdict
  # Recall that routing off does not cut 10x.
  fa = _recalling(seed_report["factual"], on=0.3, off=0.2)
  assert _rows("factual", fa, seed_report)["factual_off"][1] == claims.DOES_NOT_HOLD


def test_dla_and_mover_hold_only_with_recall_and_their_effect(seed_report):
  fa = _recalling(seed_report["factual"])
  rel = {"embedding": 0.1, "heads_raw": 0.2, "routing_delta": 3.0, "mlps": 0.5}
  fa = _factual_with(
    fa,
    mean_dla_relative_to_mean_logit=rel,
    mover_ratio_zero_geomean=1.5,
    mover_p_value_zero=0.01,
  )
  rows = _rows("factual", fa, seed_report)
  assert rows["dla"][1] == claims.HOLDS and rows["mover"][1] == claims.HOLDS
  # The same effects on a model without recall: uninformative.
  no_recall = _recalling(fa, rank=154)
  rows = _rows("factual", no_recall, seed_report)
  assert _uninformative(rows["dla"][1], "no recall") and _uninformative(rows["mover"][1])
  # Recall, but routing contributes nothing / the mover head is like any other.
  flat = _factual_with(
    fa,
    mean_dla_relative_to_mean_logit={**rel, "routing_delta": 0.0},
    mover_p_value_zero=0.5,
  )
  rows = _rows("factual", flat, seed_report)
  assert rows["dla"][1] == claims.DOES_NOT_HOLD and rows["mover"][1] == claims.DOES_NOT_HOLD


# ablation: layer_ko gated on >= 4 layers; ppl_conditions never "holds" without the
# component control; mean_routing and ppl_gain against their controls.


def test_layer_knockout_at_two_layers_is_uninformative(seed_report):
  value, verdict = _rows("ablation", seed_report["ablation"], seed_report)["layer_ko"]
  assert _uninformative(verdict, "2 layers", "chance 50%"), verdict


def test_layer_knockout_holds_only_for_a_dominant_layer_at_the_paper_depth(small_report):
  ab = small_report["ablation"]
  dominant = _with_model(ab, "routed", per_layer_delta_ppl=[0.1, 0.2, 0.1, 20.0], worst_layer=3)
  assert _rows("ablation", dominant, small_report)["layer_ko"][1] == claims.HOLDS
  # A model whose layers matter alike (no layer dominates), or the wrong layer.
  flat = _with_model(ab, "routed", per_layer_delta_ppl=[5.0, 5.1, 5.0, 5.2], worst_layer=3)
  wrong = _with_model(ab, "routed", per_layer_delta_ppl=[20.0, 0.2, 0.1, 0.1], worst_layer=0)
  for r in (flat, wrong):
    assert _rows("ablation", r, small_report)["layer_ko"][1] == claims.DOES_NOT_HOLD


def _ppl_with(ab, **conds):
  ppl = dict(ab.models["routed"].ppl)
  for cond, v in conds.items():
    ppl[cond] = {**ppl[cond], "all": v}
  return _with_model(ab, "routed", ppl=ppl)


def test_routing_off_doubling_needs_a_component_control(seed_report):
  # PPL 50.7 -> 172.9 with routing off: the criterion is met, the control is missing.
  value, verdict = _rows("ablation", seed_report["ablation"], seed_report)["ppl_conditions"]
  assert _uninformative(verdict, "no component control"), verdict
  # A model whose routing does nothing: off = as trained.
  ab = seed_report["ablation"]
  on = ab.models["routed"].ppl["as_trained"]["all"]
  inert = _ppl_with(ab, all_off=on, **{"all_0.5": on})
  assert _rows("ablation", inert, seed_report)["ppl_conditions"][1] == claims.DOES_NOT_HOLD


def test_mean_routing_fails_for_input_independent_routing(seed_report):
  ab = seed_report["ablation"]
  assert _rows("ablation", ab, seed_report)["mean_routing"][1] == claims.HOLDS
  on = ab.models["routed"].ppl["as_trained"]["all"]
  constant = _ppl_with(ab, all_mean=on)  # r at its mean does as well: routing ignores input
  assert _rows("ablation", constant, seed_report)["mean_routing"][1] == claims.DOES_NOT_HOLD


def test_ppl_gain_fails_for_a_baseline_like_pair(seed_report):
  ab = seed_report["ablation"]
  assert _rows("ablation", ab, seed_report)["ppl_gain"][1] == claims.HOLDS
  for ci, expected in (((-0.004, 0.003), "no difference (within +/-1%)"), ((-0.03, 0.04), None)):
    control = dataclasses.replace(
      ab.control,
      routed_ppl_reduction_ci95={**ab.control.routed_ppl_reduction_ci95, "all": ci},
    )
    verdict = _rows("ablation", dataclasses.replace(ab, control=control), seed_report)["ppl_gain"][
      1
    ]
    assert verdict == expected if expected else _uninformative(verdict, "wider than"), verdict


def test_prefix_holds_only_above_the_baseline(seed_report):
  ca = seed_report["causality"]
  assert _rows("causality", ca, seed_report)["prefix"][1] == claims.DOES_NOT_HOLD
  for ci, expected in (((0.01, 0.02), claims.HOLDS), ((-0.003, 0.002), "no difference")):
    leak = dataclasses.replace(ca.leak, reduction_ci95={**ca.leak.reduction_ci95, PREFIX: ci})
    verdict = _rows("causality", dataclasses.replace(ca, leak=leak), seed_report)["prefix"][1]
    assert verdict.startswith(expected), verdict


# induction: gated on induction above chance in the routed model or the baseline.


def test_induction_rows_at_chance_are_uninformative(seed_report):
  # 0.06% vs chance 0.05%: no induction to test.
  rows = _rows("induction", seed_report["induction"], seed_report)
  for key in ("induction", "induction_ko"):
    assert _uninformative(rows[key][1], "no induction", "0.06%", "chance 0.05%"), rows[key]


def test_induction_rows_hold_only_with_induction_and_its_effect(seed_report):
  ind = seed_report["induction"]
  inducing = _with_model(
    _with_model(ind, "baseline", accuracy=0.9),
    "routed",
    accuracy=0.9,
    accuracy_routing_off=0.01,
    accuracy_strongest_head_knocked_out=0.88,
  )
  rows = _rows("induction", inducing, seed_report)
  assert rows["induction"][1] == claims.HOLDS and rows["induction_ko"][1] == claims.HOLDS
  # Routing off leaves induction intact; knocking the head out destroys it.
  other = _with_model(
    inducing, "routed", accuracy_routing_off=0.85, accuracy_strongest_head_knocked_out=0.1
  )
  rows = _rows("induction", other, seed_report)
  assert rows["induction"][1] == claims.DOES_NOT_HOLD
  assert rows["induction_ko"][1] == claims.DOES_NOT_HOLD
  # The baseline induces and the routed model is at chance: a result (does not hold), not a gate.
  lost = _with_model(_with_model(ind, "baseline", accuracy=0.9), "routed", accuracy=0.0006)
  assert _rows("induction", lost, seed_report)["induction"][1] == claims.DOES_NOT_HOLD


# regimes: classification never "holds" (no test on dependent windows); variance vs its null.


def test_classification_is_never_holds(seed_report, seed_report_causal):
  # 100% above every control: uninformative (windows not independent, no interval).
  verdict = _rows("regimes", seed_report["regimes"], seed_report)["classification"][1]
  assert _uninformative(verdict, "not independent"), verdict
  # 94% below the baseline's residuals (98%): does not hold.
  r = seed_report_causal
  assert _rows("regimes", r["regimes"], r)["classification"][1] == claims.DOES_NOT_HOLD


def test_variance_holds_only_above_its_null_and_the_last_layer(seed_report):
  reg = seed_report["regimes"]
  m = reg.models["routed"]
  big = _with_model(reg, "routed", domain_variance_per_layer=[0.5, 0.01])
  assert _rows("regimes", big, seed_report)["variance"][1] == claims.HOLDS
  # Layer 0 inside its shuffled-label null: no domain signal.
  p95 = m.domain_variance_null_p95
  null_like = _with_model(reg, "routed", domain_variance_per_layer=[0.5 * p95[0], 0.01 * p95[0]])
  assert _rows("regimes", null_like, seed_report)["variance"][1] == claims.DOES_NOT_HOLD


# directions: readout against random directions.


def test_readout_holds_only_above_random_directions(seed_report):
  d = seed_report["directions"]
  m = d.models["routed"]
  z = list(m.function_share_z_per_layer)
  up = _with_model(d, "routed", function_share_z_per_layer=z[:-1] + [3.0])
  assert _rows("directions", up, seed_report)["readout"][1] == claims.HOLDS
  flat = _with_model(d, "routed", function_share_z_per_layer=z[:-1] + [0.5])
  assert _rows("directions", flat, seed_report)["readout"][1].startswith("no difference (")
  assert _rows("directions", d, seed_report)["cosine"][1] != claims.HOLDS
