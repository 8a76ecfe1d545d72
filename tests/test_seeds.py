"""Seeds: the interval and verdict rule on known inputs, the aggregation on synthetic metrics
(prefix-only keys present, and missing), and the seeds command end to end at toy size."""

import json
import math
import os
import subprocess
import sys

import pytest

from dirroute_jax.analysis import stats
from dirroute_jax.config import ConfigError
from dirroute_jax.experiments import seeds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_t_interval_known_values():
  ci = stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
  # mean 3, sd sqrt(2.5), t(0.975, 4 dof) = 2.7764451...
  half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
  assert ci["n"] == 5 and ci["mean"] == pytest.approx(3.0)
  assert ci["sd"] == pytest.approx(math.sqrt(2.5))
  assert (ci["low"], ci["high"]) == pytest.approx((3 - half, 3 + half))
  assert (ci["low"], ci["high"]) == pytest.approx((1.0368, 4.9632), abs=1e-4)
  two = stats.t_interval([0.1, 0.3])  # sd/sqrt(n) = 0.1, t(0.975, 1 dof) = 12.706
  assert (two["low"], two["high"]) == pytest.approx((0.2 - 1.27062, 0.2 + 1.27062), abs=1e-4)
  one = stats.t_interval([0.5])
  assert math.isnan(one["low"]) and "fewer than 2" in one["note"]


def test_verdict_rule():
  assert stats.verdict(0.01, 0.2) == stats.HOLDS
  assert stats.verdict(-0.2, -0.01) == stats.OPPOSITE
  assert stats.verdict(-0.01, 0.2) == stats.NO_DIFFERENCE
  assert stats.verdict(0.0, 0.2) == stats.NO_DIFFERENCE  # touching zero does not exclude it
  assert stats.verdict(-0.2, -0.01, paper_side=-1) == stats.HOLDS
  assert stats.verdict(0.01, 0.2, paper_side=-1) == stats.OPPOSITE
  assert stats.verdict(math.nan, math.nan) == stats.NO_DIFFERENCE
  with pytest.raises(ValueError, match="paper_side"):
    stats.verdict(0.1, 0.2, paper_side=0)
  assert stats.reduction(math.log(2.0)) == pytest.approx(0.5)
  assert stats.reduction(-math.log(2.0)) == pytest.approx(-1.0)


def _metrics(ppl: dict[str, float], domain_factor: dict[str, float]) -> dict:
  out = {}
  for model, p in ppl.items():
    out[f"eval/{model}/perplexity"] = p
    for d, f in domain_factor.items():
      out[f"eval/{model}/{d}/perplexity"] = p * f
  return out


# Per seed log-ratios chosen so the answers are known: routed vs baseline under sequence_mean
# gains log-ratio 0.10, 0.12, 0.14; under causal_mean 0.01, 0.00, 0.02.
_SEQ = (0.10, 0.12, 0.14)
_CAUSAL = (0.01, 0.00, 0.02)


def _finals(with_prefix_for=(0, 1, 2)):
  finals = {"sequence_mean": {}, "causal_mean": {}}
  for i, seed in enumerate((3, 4, 5)):
    base = 100.0 + seed
    for pooling, gains in (("sequence_mean", _SEQ), ("causal_mean", _CAUSAL)):
      ppl = {"routed": base * math.exp(-gains[i]), "baseline": base, "matched": base * 0.99}
      if pooling == "sequence_mean" and i in with_prefix_for:
        ppl[seeds.PREFIX] = base * math.exp(-0.005 * i)  # the leak-free routed model
      finals[pooling][seed] = {
        "seed": seed,
        "step": 10,
        "train_sec": 1.0,
        "eval": _metrics(ppl, {"code": 0.5, "prose": 2.0}),
      }
  return finals


def test_aggregate_paired_intervals_on_synthetic_metrics():
  res = seeds.aggregate(_finals())
  assert res["domains"] == ["code", "prose"]
  seq = res["poolings"]["sequence_mean"]["comparisons"]
  for scope in ("all", "code", "prose"):  # domain factors cancel in a paired ratio
    e = seq["routed vs baseline"][scope]
    ci = stats.t_interval(_SEQ)
    assert e["n"] == 3 and e["mean_log_ratio"] == pytest.approx(0.12)
    assert e["ci_log_ratio"] == pytest.approx([ci["low"], ci["high"]])
    assert e["reduction"] == pytest.approx(1 - math.exp(-0.12))
    assert e["t_test_p"] == pytest.approx(stats.t_test_p(_SEQ))
    assert e["sign_flip_p"] == 2 / 8  # 3 seeds, all one sign: the exact test's floor
    if scope == "all":  # the primary comparison: its own p
      assert "p_holm" not in e and e["verdict"] == "holds"
    else:  # exploratory: Holm over every per-domain test of the table decides
      assert e["p_holm"] > e["t_test_p"]
      assert e["verdict"] == stats.paired_verdict(_SEQ, stats.log_margin(0.01), p=e["p_holm"])
    assert e["per_seed_log_ratio"] == pytest.approx({"3": 0.10, "4": 0.12, "5": 0.14})
  # routed vs matched = routed vs baseline + log(0.99), per seed.
  assert seq["routed vs matched"]["all"]["mean_log_ratio"] == pytest.approx(0.12 + math.log(0.99))
  causal = res["poolings"]["causal_mean"]["comparisons"]
  assert causal["routed vs baseline"]["all"]["verdict"] == "uninformative"
  assert seeds.PREFIX not in res["poolings"]["causal_mean"]["perplexity"]["3"]
  assert not any("prefix" in label for label in causal)
  # Prefix-only routing: gain over the baseline 0, 0.005, 0.01; leak = routed - prefix.
  prefix = seq["routed, prefix-only routing, vs baseline"]["all"]
  assert prefix["mean_log_ratio"] == pytest.approx(0.005)
  leak = seq["leak: routed as trained vs prefix-only routing"]["all"]
  assert leak["mean_log_ratio"] == pytest.approx(0.12 - 0.005)
  # Pooling difference, paired by seed: 0.09, 0.12, 0.12.
  diff = res["pooling_difference"]["routed vs baseline"]["all"]
  ci = stats.t_interval([0.09, 0.12, 0.12])
  assert diff["mean_log_ratio"] == pytest.approx(0.11)
  assert diff["ci_log_ratio"] == pytest.approx([ci["low"], ci["high"]])
  assert res["checks"]["baseline_max_abs_log_ppl_gap_between_poolings"] == 0.0
  md = seeds.to_markdown(res)
  assert "| sequence_mean | routed vs baseline | all (primary) | +11.31% |" in md
  for seed in ("3", "4", "5"):
    assert f"| sequence_mean | {seed} |" in md and f"| causal_mean | {seed} |" in md


def test_aggregate_reports_missing_prefix_metrics_instead_of_failing():
  res = seeds.aggregate(_finals(with_prefix_for=(0,)))  # seeds 4 and 5 lack the keys
  entry = res["poolings"]["sequence_mean"]["comparisons"][
    "routed, prefix-only routing, vs baseline"
  ]["all"]
  assert "verdict" not in entry
  assert entry["missing"] == [
    "seed 4: eval/routed_prefix/perplexity",
    "seed 5: eval/routed_prefix/perplexity",
  ]
  assert (
    res["poolings"]["sequence_mean"]["comparisons"]["routed vs baseline"]["all"]["verdict"]
    == "holds"
  )
  md = seeds.to_markdown(res)
  assert "not computed: 2 of 3 runs lack eval/routed_prefix/perplexity" in md
  none = seeds.aggregate(_finals(with_prefix_for=()))
  md = seeds.to_markdown(none)
  assert "not computed: 3 of 3 runs lack eval/routed_prefix/perplexity" in md


def test_pooling_difference_uses_only_seeds_run_under_both():
  finals = _finals()
  del finals["causal_mean"][5]
  diff = seeds.aggregate(finals)["pooling_difference"]["routed vs baseline"]["all"]
  assert diff["excluded"] == ["seed 5: under one pooling only"]
  assert diff["per_seed_log_ratio"] == pytest.approx({"3": 0.09, "4": 0.12})
  assert diff["n"] == 2 and diff["mean_log_ratio"] == pytest.approx(0.105)
  finals["causal_mean"] = {}
  res = seeds.aggregate({k: v for k, v in finals.items() if v})
  assert res["pooling_difference"] == {} and "no seed" in res["checks"]["pooling_difference"]


def test_a_routed_and_flops_matched_experiment_compares_only_what_it_trained():
  """The compute-matched control trains routed and flops_matched (--models) in an OUT of its
  own: its table has their comparisons (and the prefix-only twin's), none against models it
  did not train, and no pooling difference."""
  finals = {"sequence_mean": {}}
  for i, seed in enumerate((0, 1, 2)):
    ppl = {"routed": 100.0 * math.exp(-_SEQ[i]), "flops_matched": 100.0, seeds.PREFIX: 103.0}
    finals["sequence_mean"][seed] = {"seed": seed, "step": 10, "eval": _metrics(ppl, {"code": 1})}
  res = seeds.aggregate(finals)
  seq = res["poolings"]["sequence_mean"]
  assert seq["models"] == ["routed", "flops_matched"]
  assert list(seq["comparisons"]) == [
    "leak: routed as trained vs prefix-only routing",
    "routed vs flops_matched",
    "routed, prefix-only routing, vs flops_matched",
  ]
  assert seq["comparisons"]["routed vs flops_matched"]["all"]["mean_log_ratio"] == pytest.approx(
    0.12
  )
  assert res["pooling_difference"] == {}
  md = seeds.to_markdown(res)
  assert "| pooling | seed | routed | flops_matched | routed, prefix-only routing |" in md
  rows = [l for l in md.splitlines() if l.startswith("| sequence_mean |")]
  assert rows and not any("vs baseline" in r or "vs matched" in r or "missing" in r for r in rows)


def test_finished_seeds_are_skipped_only_under_the_same_config(tiny_cfg, tmp_path):
  out = str(tmp_path)
  for pooling in seeds.POOLINGS:
    os.makedirs(seeds.workdir_of(out, pooling, 7))
    with open(os.path.join(seeds.workdir_of(out, pooling, 7), seeds.FINAL), "w") as f:
      json.dump(
        {
          "seed": 7,
          "eval": {},
          "config": seeds._flat_config(seeds.run_config(tiny_cfg, pooling, 7)),
        },
        f,
      )
  logs = []
  assert seeds.run_seeds(tiny_cfg, out, [7], log=logs.append) is None  # nothing left to train
  assert logs == [f"2 of 2 runs already finished in {out}; 0 to train."]
  tiny_cfg.data.cache_dir = "/elsewhere"  # does not change what is trained
  assert seeds.run_seeds(tiny_cfg, out, [7], log=logs.append) is None
  tiny_cfg.steps += 1
  with pytest.raises(ConfigError, match="different config .steps: 300 there, 301 now"):
    seeds.run_seeds(tiny_cfg, out, [7], log=logs.append)
  tiny_cfg.steps -= 1
  with pytest.raises(ConfigError, match="models: 'routed,baseline,matched' there, 'routed,flo"):
    seeds.run_seeds(tiny_cfg, out, [7], models=("routed", "flops_matched"), log=logs.append)


@pytest.mark.slow
def test_seeds_command_end_to_end(tmp_path):
  out = str(tmp_path / "seeds")
  cmd = [
    sys.executable,
    os.path.join(REPO, "launch", "seeds.py"),
    f"--out={out}",
    "--config=" + os.path.join(REPO, "configs", "seeds.py"),
    "--seeds=0,1",
    "--config.steps=4",
    "--config.eval_every=2",
    "--config.log_every=2",
    "--config.checkpoint_every=0",
    "--config.batch_size=8",
    "--config.seq_len=32",
    "--config.eval_batches=2",
    "--config.data.tokenizer=bytes",
    "--config.model.vocab_size=257",
    f"--config.data.cache_dir={tmp_path / 'cache'}",
    f"--compilation_cache={tmp_path / 'xla'}",
    "--claims_seed=-1",
  ]  # the reports behind claims.md are tested in test_claims.py
  env = {**os.environ, "PYTHONPATH": REPO, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  first = subprocess.run(cmd, capture_output=True, text=True, env=env)
  assert first.returncode == 0, first.stderr[-3000:]
  with open(os.path.join(out, "seeds.json")) as f:
    res = json.load(f)
  for pooling in ("sequence_mean", "causal_mean"):
    assert res["poolings"][pooling]["seeds"] == [0, 1]
    assert set(res["poolings"][pooling]["perplexity"]) == {"0", "1"}
    assert set(
      res["poolings"][pooling]["comparisons"]["routed vs matched"]["all"]["per_seed_log_ratio"]
    ) == {"0", "1"}
    curves = seeds.read_curves(seeds.workdir_of(out, pooling, 1))
    assert set(curves) >= {"routed", "baseline", "matched"}
    assert curves["matched"][0] == [2, 4]
  assert res["checks"]["baseline_max_abs_log_ppl_gap_between_poolings"] == 0.0
  with open(os.path.join(out, "seeds.md")) as f:
    md = f.read()
  for pooling in ("sequence_mean", "causal_mean"):
    for seed in (0, 1):
      assert f"| {pooling} | {seed} |" in md
  assert os.path.getsize(os.path.join(out, "ppl_vs_step.png")) > 10_000
  # A rerun trains nothing: every seed is finished.
  again = subprocess.run(cmd, capture_output=True, text=True, env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "4 of 4 runs already finished" in again.stdout + again.stderr
  assert "=== run" not in again.stdout + again.stderr


def test_seeds_command_rejects_bad_seeds(tmp_path):
  out = subprocess.run(
    [sys.executable, os.path.join(REPO, "launch", "seeds.py"), f"--out={tmp_path}", "--seeds=0,x"],
    capture_output=True,
    text=True,
    env={**os.environ, "PYTHONPATH": REPO},
  )
  assert out.returncode == 2 and "--seeds=0,x: give distinct integers" in out.stderr
  assert "Traceback" not in out.stderr


@pytest.mark.parametrize("experiment", ["seeds", "flops_matched"])
def test_committed_tables_are_what_aggregate_only_writes(experiment):
  """results/<experiment>/seeds.md and seeds.json come from the committed final.json files
  (`launch/seeds.py --aggregate_only`), nothing edited by hand."""
  out = os.path.join(REPO, "results", experiment)
  with open(os.path.join(out, "seeds.json")) as f:
    committed = json.load(f)
  wanted = sorted({int(s) for p in committed["poolings"].values() for s in p["seeds"]})
  res = seeds.aggregate(seeds.collect(out, seeds=wanted))
  assert json.loads(json.dumps(res)) == committed
  with open(os.path.join(out, "seeds.md")) as f:
    assert f.read() == seeds.to_markdown(res)
