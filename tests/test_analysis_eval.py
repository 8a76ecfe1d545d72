"""Held-out evaluation: the whole split by default, the measured leak of the sequence_mean
router (`eval/routed_prefix/...`), the mean-routing ablation, whole-word factual scores, what a
workdir records about its data, and the --prompts flag."""

import copy
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dirroute_jax.analysis import ablation as ablation_lib
from dirroute_jax.analysis import factual as factual_lib
from dirroute_jax.analysis import forward as forward_lib
from dirroute_jax.analysis import stats
from dirroute_jax.data.tokenizers import ByteTokenizer
from dirroute_jax.model import interventions as iv_lib
from dirroute_jax.model.transformer import build_model, forward, init_params
from dirroute_jax.model.variants import model_configs
from dirroute_jax.train import evaluate as eval_lib
from dirroute_jax.train import sharding
from dirroute_jax.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINS = ("a", "b")


def _small(cfg, pooling):
  cfg.model.pooling, cfg.model.num_layers, cfg.model.vocab_size = pooling, 1, 257
  cfg.batch_size, cfg.seq_len = 8, 16
  return cfg


def _batches(n=2, B=8, T=16, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    tokens = rng.integers(0, 257, (B, T + 1)).astype(np.int32)
    weights = np.ones((B, T), np.float32)
    weights[-1] = 0.0  # a padding row
    out.append(
      {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "weights": weights,
        "domain": np.where(np.arange(B) == B - 1, -1, np.arange(B) % 2).astype(np.int32),
      }
    )
  return out


def _models_and_params(cfg):
  models = {n: build_model(mc) for n, mc in model_configs(cfg).items()}
  key = jax.random.key(0)
  return models, {n: init_params(m, key) for n, m in models.items()}


@pytest.mark.slow
def test_routed_prefix_is_the_same_params_with_prefix_pooling(tiny_cfg):
  cfg = _small(tiny_cfg, "sequence_mean")
  models, params = _models_and_params(cfg)
  m = eval_lib.evaluate_params(models, params, _batches(), DOMAINS)
  for key in (
    "eval/routed_prefix/perplexity",
    "eval/routed_prefix/loss",
    "eval/routed_prefix/a/perplexity",
    "eval/routed_prefix/b/perplexity",
  ):
    assert math.isfinite(m[key]), key
  # It is exactly a causal_mean model run on the sequence_mean model's parameters.
  causal = copy.deepcopy(cfg.model)
  causal.pooling = "causal_mean"
  twin = build_model(causal)
  loss = tokens = 0.0
  for b in _batches():
    logits, _ = forward(twin, params["routed"], b["inputs"])
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64)[..., :257])
    ce = -np.take_along_axis(np.asarray(logp), b["targets"][..., None], -1)[..., 0]
    loss, tokens = loss + float((ce * b["weights"]).sum()), tokens + float(b["weights"].sum())
  assert m["eval/routed_prefix/loss"] == pytest.approx(loss / tokens, rel=1e-5)
  assert m["eval/routed_prefix/loss"] != m["eval/routed/loss"]  # the leak changes the number
  # A causal router has nothing to remove: no prefix metrics.
  models, params = _models_and_params(_small(copy.deepcopy(tiny_cfg), "causal_mean"))
  assert not any(
    "routed_prefix" in k for k in eval_lib.evaluate_params(models, params, _batches(), DOMAINS)
  )


@pytest.mark.slow
def test_training_eval_reports_routed_prefix(tiny_cfg):
  cfg = _small(tiny_cfg, "sequence_mean")
  mesh = sharding.make_mesh(cfg.mesh)
  trainer = step_lib.make_trainer(cfg, mesh)
  with jax.set_mesh(mesh):
    state = trainer.init_state(jax.random.key(0))
    m = eval_lib.evaluate(trainer, state, _batches(), DOMAINS)
  params = {n: jax.device_get(state["models"][n]["params"]) for n in trainer.models}
  ref = eval_lib.evaluate_params(trainer.models, params, _batches(), DOMAINS)
  assert m["eval/batches"] == 2
  for key in (
    "eval/routed/loss",
    "eval/baseline/loss",
    "eval/routed_prefix/loss",
    "eval/routed_prefix/a/perplexity",
  ):
    assert m[key] == pytest.approx(ref[key], rel=1e-5), key


@pytest.mark.slow
def test_mean_routing_fixes_every_weight_at_its_own_value(tiny_cfg):
  cfg = _small(tiny_cfg, "causal_mean")
  models, params = _models_and_params(cfg)
  routed = models["routed"]
  mean_r = forward_lib.mean_routing(routed, params["routed"], _batches())
  L, H, K = cfg.model.num_layers, cfg.model.num_heads, cfg.model.num_directions
  assert mean_r.shape == (L, H, K) and len(np.unique(mean_r)) > 1
  iv = forward_lib.complete(routed.cfg, iv_lib.routing_fixed(routed.cfg, mean_r))
  _, acts = forward(
    routed,
    params["routed"],
    _batches()[0]["inputs"],
    interventions=iv,
    capture=("blocks.0.attn.r",),
  )
  r_BxTxHxK = np.asarray(acts["blocks.0.attn.r"])
  assert np.allclose(r_BxTxHxK, mean_r[0][None, None], atol=1e-7)
  r = ablation_lib.ablation_ppl(models, params, _batches(), DOMAINS)
  ppl = r.models["routed"].ppl
  assert ppl["all_mean"]["all"] != ppl["as_trained"]["all"]
  assert r.models["baseline"].ppl["all_mean"] == r.models["baseline"].ppl["as_trained"]


def test_paired_bootstrap_interval():
  rng = np.random.default_rng(0)
  tokens = np.full(400, 10.0)
  loss_b = rng.uniform(20, 40, 400)
  lo, hi = stats.paired_bootstrap_reduction(loss_b - 1.0, loss_b, tokens)
  assert lo == pytest.approx(hi) == pytest.approx(1 - math.exp(-0.1))  # a constant gain
  lo, hi = stats.paired_bootstrap_reduction(loss_b + rng.normal(0, 3, 400), loss_b, tokens)
  assert lo < 0 < hi  # pure noise: the interval straddles zero


@pytest.mark.slow
def test_factual_scores_whole_words_and_flags_chance(tiny_cfg):
  cfg = _small(tiny_cfg, "causal_mean")
  models, params = _models_and_params(cfg)
  tok = ByteTokenizer()
  prompts = [{"prompt": "The capital of France is", "target": " Paris", "subject": "France"}]
  r = factual_lib.factual_recall(
    {"routed": models["routed"]}, {"routed": params["routed"]}, tok, prompts, None, null_heads=True
  )
  e = r.models["routed"].prompts[0]
  assert e.target_tokens == [" ", "P", "a", "r", "i", "s"]
  ids = tok.encode(prompts[0]["prompt"] + prompts[0]["target"])
  n = len(tok.encode(prompts[0]["prompt"]))
  logits, _ = forward(models["routed"], params["routed"], np.asarray([ids], np.int32))
  logp = np.asarray(jax.nn.log_softmax(np.asarray(logits[0], np.float32)[:, :257]))
  word = float(sum(logp[n - 1 + j, ids[n + j]] for j in range(6)))
  assert e.as_trained.target_logprob == pytest.approx(word, abs=1e-4)
  assert e.as_trained.p_target == pytest.approx(math.exp(word), rel=1e-4)
  assert e.chance_logprob == pytest.approx(-6 * math.log(257))
  assert e.as_trained.at_chance  # an untrained model guesses
  assert r.models["routed"].summary.as_trained.num_at_chance == 1
  assert 0 <= e.mover_head["percentile_zero"] <= 1


def test_workdir_records_corpus_and_token_counts(trained_workdir):
  rec = json.load(open(os.path.join(trained_workdir, "data_fingerprint.json")))
  assert rec["corpus"].startswith("embedded-") and rec["tokenizer"]
  assert set(rec["tokens"]) == {"train", "validation"}
  assert set(rec["tokens"]["validation"]) == {"code", "prose", "docs"}
  assert all(v > 0 for per in rec["tokens"].values() for v in per.values())
  assert rec["eval_windows"] > 0


@pytest.mark.parametrize(
  "content,message",
  [
    ("not json", "not valid JSON"),
    ("[]", "holds no prompts"),
    ('[{"prompt": "a"}]', "needs prompt/target"),
  ],
)
def test_interpret_bad_prompts_file_is_a_clear_error(tmp_path, content, message):
  path = tmp_path / "prompts.json"
  path.write_text(content)
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "interpret.py"),
      f"--workdir={tmp_path}",
      f"--out={tmp_path / 'out'}",
      f"--prompts={path}",
    ],
    capture_output=True,
    text=True,
    env={**os.environ, "XLA_FLAGS": ""},
  )
  assert proc.returncode != 0
  assert "--prompts" in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
