"""The learning-rate check: each arm's best LR, best-against-best comparisons paired by seed, and
one-line errors for directories that cannot be compared. Synthetic final.json files, so the
right answers are known."""

import json
import math
import os
import subprocess
import sys

import pytest

from dirroute_jax.experiments import lr_check, seeds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# PPL per (peak LR, arm), before a per-seed factor: routed is best at 3e-3, the baseline at
# 1e-2 (the grid's edge), matched at 1e-3 (the other edge).
_PPL = {
  1e-3: {"routed": 110.0, "baseline": 108.0, "matched": 100.0},
  3e-3: {"routed": 100.0, "baseline": 104.0, "matched": 103.0},
  1e-2: {"routed": 120.0, "baseline": 102.0, "matched": 109.0},
}
_SEED_FACTOR = {0: 1.0, 1: 1.1}


def _write(root, lr, seed_list=(0, 1), pooling="causal_mean", final_ratio=0.1):
  out = str(root / f"lr_{lr:g}{'' if final_ratio == 0.1 else '_other_final'}")
  for s in seed_list:
    wd = seeds.workdir_of(out, pooling, s)
    os.makedirs(wd)
    ev = {f"eval/{m}/perplexity": p * _SEED_FACTOR[s] for m, p in _PPL[lr].items()}
    with open(os.path.join(wd, seeds.FINAL), "w") as f:
      json.dump(
        {
          "pooling": pooling,
          "seed": s,
          "step": 10,
          "eval": ev,
          "config": {lr_check.LR_KEY: lr, lr_check.FINAL_LR_KEY: lr * final_ratio},
        },
        f,
      )
  return out


def test_each_arm_takes_its_best_lr_and_is_compared_best_against_best(tmp_path):
  dirs = [_write(tmp_path, lr) for lr in (3e-3, 1e-2, 1e-3)]  # the LR comes from final.json
  res = lr_check.check(lr_check.collect(dirs, "causal_mean", [0, 1]))
  assert res["lrs"] == [1e-3, 3e-3, 1e-2]
  assert res["best"] == {
    "routed": {"lr": 3e-3, "at_edge": False},
    "baseline": {"lr": 1e-2, "at_edge": True},
    "matched": {"lr": 1e-3, "at_edge": True},
  }
  bvb = res["best_vs_best"]
  # The per-seed factor cancels in the paired log-ratio: every seed gives the same difference.
  assert bvb["baseline"]["per_seed_log_ratio"] == pytest.approx(
    {"0": math.log(102 / 100), "1": math.log(102 / 100)}
  )
  assert bvb["matched"]["mean_log_ratio"] == pytest.approx(0.0)
  # At the shared 1e-3 routed loses to matched; at its best LR it ties.
  assert res["shared_lr"]["0.001"]["matched"]["mean_log_ratio"] == pytest.approx(
    math.log(100 / 110)
  )
  md = lr_check.to_markdown(res)
  assert "| routed | 110.00 / 121.00 (geo-mean 115.37) | 100.00 / 110.00" in md
  assert "0.01 (edge of the grid)" in md and "best: 0.003, 0.01" in md


def test_directories_that_cannot_be_paired_are_refused(tmp_path):
  a = _write(tmp_path, 1e-3)
  b = _write(tmp_path, 3e-3, seed_list=(0,))
  with pytest.raises(FileNotFoundError, match=r"seed\(s\) \[1\] under causal_mean not finished"):
    lr_check.collect([a, b], "causal_mean", [0, 1])
  with pytest.raises(ValueError, match="peak LR 0.001 is already given"):
    lr_check.collect([a, a], "causal_mean", [0, 1])
  c = _write(tmp_path, 1e-2, final_ratio=0.5)
  with pytest.raises(ValueError, match="final LR / peak LR differs between the directories"):
    lr_check.collect([a, c], "causal_mean", [0, 1])


def test_launcher_writes_the_table_or_one_line(tmp_path):
  dirs = [_write(tmp_path, lr) for lr in _PPL]
  run = lambda *args: subprocess.run(
    [sys.executable, os.path.join(REPO, "launch", "lr_check.py"), *args],
    capture_output=True,
    text=True,
  )
  out = run("--runs=" + ",".join(dirs), f"--out={tmp_path / 'check'}")
  assert out.returncode == 0, out.stderr
  assert "## Learning-rate check (causal_mean, seeds 0, 1)" in out.stdout
  assert os.path.exists(tmp_path / "check" / "lr_check.json")
  bad = run("--runs=" + ",".join(dirs), "--seeds=0,x", f"--out={tmp_path / 'check'}")
  assert bad.returncode != 0 and bad.stderr.strip().startswith("error: ")
  assert len(bad.stderr.strip().splitlines()) == 1 and "--seeds=0,x" in bad.stderr


def test_the_committed_check_is_what_the_command_writes():
  """results/lr_check: the peak-LR 1e-3 and 1e-2 runs beside the seeds' 3e-3 runs."""
  with open(os.path.join(REPO, "results", "lr_check", "lr_check.json")) as f:
    committed = json.load(f)
  dirs = [
    os.path.join(REPO, "results", d) for d in ("seeds", "lr_check/lr_1e-3", "lr_check/lr_1e-2")
  ]
  res = lr_check.check(lr_check.collect(dirs, committed["pooling"], committed["seeds"]))
  assert json.loads(json.dumps(res)) == committed
  with open(os.path.join(REPO, "results", "lr_check", "lr_check.md")) as f:
    assert f.read() == lr_check.to_markdown(res)
