"""The leak by position over seeds, from the committed causality reports of seeds 5 and 6
(results/leak_by_position): each estimate recomputed by hand from the reports' numbers."""

import json
import math
import os
import shutil

import pytest

from dirroute_jax.analysis import stats
from dirroute_jax.experiments import leak_by_position
from dirroute_jax.model.variants import PREFIX_ONLY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.join(REPO, "results", "leak_by_position")


def _ppl(pooling, seed):
  with open(os.path.join(ROOT, pooling, f"seed_{seed}", "report.json")) as f:
    return json.load(f)["causality"]["ppl_by_position"]


def test_estimates_are_paired_log_differences_of_the_reports():
  res = leak_by_position.aggregate(leak_by_position.load(ROOT, [5, 6]))
  assert res["seeds"] == [5, 6] and res["buckets"] == ["0-7", "8-63", "64+"]
  assert res["baseline_gap"] == 0.0  # both poolings trained the same baseline
  retrained, prefix, causal = (res["estimates"][e[0]] for e in leak_by_position.ESTIMATES)
  for s in (5, 6):
    seq, cau = _ppl("sequence_mean", s), _ppl("causal_mean", s)
    for k in res["buckets"]:
      assert retrained[k]["per_seed_log_ratio"][str(s)] == pytest.approx(
        math.log(cau["routed"][k]) - math.log(seq["routed"][k])
      )
      assert prefix[k]["per_seed_log_ratio"][str(s)] == pytest.approx(
        math.log(seq["baseline"][k]) - math.log(seq[PREFIX_ONLY][k])
      )
      assert causal[k]["per_seed_log_ratio"][str(s)] == pytest.approx(
        math.log(cau["baseline"][k]) - math.log(cau["routed"][k])
      )
  # Two seeds: the first positions' gain is already outside zero, the rest is not resolved.
  assert retrained["0-7"]["verdict"] == stats.HOLDS
  assert retrained["64+"]["verdict"] == stats.UNINFORMATIVE
  md = leak_by_position.to_markdown(res)
  assert "## The leak by position in the window (seeds 5, 6)" in md
  assert md.count("| retrained pooling:") == 3


def test_a_missing_report_is_named(tmp_path):
  root = tmp_path / "lbp"
  shutil.copytree(ROOT, root)
  with pytest.raises(FileNotFoundError, match="seed_4/report.json missing: run launch/interpret"):
    leak_by_position.load(str(root), [4, 5])


def test_the_committed_table_is_what_the_command_writes():
  with open(os.path.join(ROOT, "leak_by_position.json")) as f:
    seed_list = json.load(f)["seeds"]
  res = leak_by_position.aggregate(leak_by_position.load(ROOT, seed_list))
  with open(os.path.join(ROOT, "leak_by_position.md")) as f:
    assert f.read() == leak_by_position.to_markdown(res)
