"""The claims table: filled from real reports, and every criterion able to fail.

The untrained-model tests build a workdir view with the trained fixture's data and config but
freshly initialised parameters (and the paper's sequence_mean router, so the leak row is
scored too): no "holds?" may read "yes" for a model that learned nothing.
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
  assert holds in (claims.NO, claims.NO_DIFF), (key, value, holds)


@pytest.mark.slow
def test_untrained_sequence_mean_leak_is_measured(untrained_rows):
  assert untrained_rows["causal"][0] == "LEAK"
  assert "prefix-only" in untrained_rows["prefix"][0]


def test_interval_verdict():
  assert claims.interval_verdict(0.01, 0.05) == "yes"
  assert claims.interval_verdict(-0.01, 0.05) == "no difference"
  assert claims.interval_verdict(-0.05, -0.01) == "no"
  assert claims.interval_verdict(float("nan"), 0.1) == "no difference"


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
