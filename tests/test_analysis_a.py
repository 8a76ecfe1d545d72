"""Routing ablation, factual recall / DLA / mover head, and direction steering.

Each analysis runs on the trained tiny pair; known-answer cases use hand-built models.
"""

import copy
import json
import math
import os

import jax
import numpy as np
import pytest

from dirroute_jax.analysis import ablation as ablation_lib
from dirroute_jax.analysis import dla as dla_lib
from dirroute_jax.analysis import factual as factual_lib
from dirroute_jax.analysis import result as result_lib
from dirroute_jax.analysis import steering as steering_lib
from dirroute_jax.analysis.load import load_workdir
from dirroute_jax.data.tokenizers import ByteTokenizer
from dirroute_jax.model.transformer import build_model, forward, init_params


@pytest.fixture(scope="module")
def run(trained_workdir):
  return load_workdir(trained_workdir)


def _finite(tree) -> bool:
  leaves = [x for x in jax.tree.leaves(tree) if isinstance(x, (int, float))]
  return bool(leaves) and all(math.isfinite(x) for x in leaves)


def _random_params(model, seed):
  """numpy params shaped like `init_params` (no XLA compile: these tests run on 2 cores)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda k: init_params(model, k), jax.random.key(0))

  def fill(path, s):
    names = [getattr(k, "key", "") for k in path]
    if names[-1] == "scale":
      return np.ones(s.shape, np.float32)
    if names[-1] == "bias":
      return np.zeros(s.shape, np.float32)
    std = (
      1.0
      if names[-1] == "directions"
      else (1 / np.sqrt(s.shape[0]) if "router" in names else model.cfg.init_std)
    )
    return rng.normal(0.0, std, s.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _pair(cfg, layers=1, vocab=257, pooling="causal_mean", seed=0):
  """A routed model and its baseline with the shared weights copied (numpy, editable)."""
  cfg.model.num_layers, cfg.model.vocab_size, cfg.model.pooling = layers, vocab, pooling
  routed = build_model(cfg.model)
  params = _random_params(routed, seed)
  base_cfg = copy.deepcopy(cfg.model)
  base_cfg.routing = False
  baseline = build_model(base_cfg)
  base_params = copy.deepcopy(params)
  for l in range(layers):
    for k in ("directions", "router"):
      del base_params[f"blocks_{l}"]["attn"][k]
  assert jax.tree.structure(base_params) == jax.tree.structure(
    jax.eval_shape(lambda k: init_params(baseline, k), jax.random.key(0))
  )
  return routed, params, baseline, base_params


def _batches(vocab, n=2, B=4, T=16, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    tokens = rng.integers(0, vocab, (B, T + 1)).astype(np.int32)
    out.append(
      {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "weights": np.ones((B, T), np.float32),
        "domain": np.arange(B, dtype=np.int32) % 2,
      }
    )
  return out


# ----------------------------------------------------------------------------- ablation


@pytest.mark.slow
def test_ablation_on_trained_workdir(run, trained_workdir):
  r = ablation_lib.ablation(run)
  stored = json.loads(json.dumps(result_lib.to_json(r)))
  assert result_lib.from_json(ablation_lib.Ablation, stored) == r  # report.json, lossless
  ppl = {name: m.ppl for name, m in r.models.items()}
  assert set(ppl) == {"routed", "baseline"} and _finite(ppl)
  assert r.conditions[:5] == ["as_trained", "all_off", "all_mean", "all_0.5", "all_1"]
  mean_r = np.asarray(r.mean_routing_LxHxK)
  assert (
    mean_r.shape
    == (run.cfg.model.num_layers, run.cfg.model.num_heads, run.cfg.model.num_directions)
    and ((0 < mean_r) & (mean_r < 1)).all()
  )
  lo, hi = r.control.routed_ppl_reduction_ci95["all"]
  assert lo <= r.control.routed_ppl_reduction_vs_baseline["all"] <= hi
  assert set(r.control.reduction_at_init["routed"]) == {"all", *run.data.domains}
  assert len(r.models["routed"].per_layer_delta_ppl) == run.cfg.model.num_layers
  assert set(ppl["routed"]["as_trained"]) == {"all", *run.data.domains}
  # The control: routing interventions leave the baseline bit-for-bit unchanged.
  assert r.control.baseline_invariant and r.control.max_abs_loss_change["baseline"] == 0
  assert stored["control"]["baseline_invariant"] is True  # report.json's key, as before
  # as_trained reproduces training's own held-out eval.
  rows = [json.loads(l) for l in open(os.path.join(trained_workdir, "metrics.jsonl"))]
  logged = [x for x in rows if "eval/routed/perplexity" in x][-1]
  for name in ("routed", "baseline"):
    assert abs(ppl[name]["as_trained"]["all"] / logged[f"eval/{name}/perplexity"] - 1) < 1e-5


def test_conditions_share_one_compiled_shape(tiny_cfg):
  conds = ablation_lib.conditions(tiny_cfg.model)
  shapes = {name: jax.tree.map(lambda a: (a.shape, a.dtype), iv) for name, iv in conds.items()}
  first = shapes["as_trained"]
  assert all(
    jax.tree.structure(s) == jax.tree.structure(first) and s == first for s in shapes.values()
  )


@pytest.mark.slow
def test_ablation_known_answers(tiny_cfg):
  routed, params, baseline, base_params = _pair(tiny_cfg, layers=1)
  # Router output bias +10: sigmoid(5 * ~10) == 1.0 in float32, so as trained every r = 1.
  params["blocks_0"]["attn"]["router"]["out"]["bias"][:] = 10.0
  r = ablation_lib.ablation_ppl(
    {"routed": routed, "baseline": baseline},
    {"routed": params, "baseline": base_params},
    _batches(257),
    ("a", "b"),
  )
  ppl = {name: m.ppl for name, m in r.models.items()}
  for key in ("all", "a", "b"):
    # Routing weights all 0 is the baseline's computation with the same weights.
    assert ppl["routed"]["all_off"][key] == pytest.approx(
      ppl["baseline"]["as_trained"][key], rel=1e-6
    )
    # One layer: the single-layer knockout is routing_off; the trained r = 1 is all_1.
    assert ppl["routed"]["layer_0_off"][key] == ppl["routed"]["all_off"][key]
    assert ppl["routed"]["as_trained"][key] == ppl["routed"]["all_1"][key]
  assert ppl["routed"]["all_off"]["all"] != ppl["routed"]["all_1"]["all"]
  knock = r.models["routed"]
  assert knock.worst_layer == 0
  assert knock.per_layer_delta_ppl[0] == pytest.approx(
    ppl["routed"]["all_off"]["all"] - ppl["routed"]["as_trained"]["all"]
  )
  assert r.control.baseline_invariant


# ----------------------------------------------------------------------------- factual


@pytest.mark.slow
def test_factual_on_trained_workdir(run):
  r = factual_lib.factual(run)
  stored = json.loads(json.dumps(result_lib.to_json(r)))
  assert result_lib.to_json(result_lib.from_json(factual_lib.Factual, stored)) == stored
  assert r.num_prompts >= 8 and set(r.models) == {"routed", "baseline"}
  for m in r.models.values():
    assert len(m.prompts) == r.num_prompts and _finite(result_lib.to_json(m.summary))
    for e in m.prompts:
      assert 0 < e.as_trained.p_target <= 1 and e.as_trained.rank >= 1
      assert abs(e.dla["residual"]) < 1e-4 * max(1.0, abs(e.dla["logit"]))
      mv = e.mover_head
      assert 0 <= mv["attention"] <= 1
      assert mv["ratio_zero"] == pytest.approx(mv["knockout_ratios_zero"][mv["layer"]][mv["head"]])
      assert 0 < mv["p_mean_ablated"] <= 1
  for e in r.models["baseline"].prompts:  # control: routing_off is a no-op there
    assert e.routing_off == e.as_trained and e.dla["routing_delta"] == 0.0


def test_subject_position_subword():
  class Words:  # a subword-style tokenizer: each word with its leading space is one token
    def encode(self, text):
      return [w for w in text.replace(" ", "\0 ").split("\0") if w]

  position = factual_lib.subject_position
  assert position(Words(), "The capital of France is", "France") == (3, True)
  assert position(Words(), "The Eiffel Tower is in", "Eiffel Tower") == (2, True)
  assert position(ByteTokenizer(), "The capital of France is", "France") == (20, True)
  # The subject ends mid-word: its last token merges with what follows.
  assert position(Words(), "Francesca is", "France")[1] is False


def test_mover_head_finder_picks_planted_head():
  L, H, T = 3, 4, 7
  rng = np.random.default_rng(0)
  pattern = rng.random((L, H, T, T)) * np.tril(np.ones((T, T)))
  pattern[2, 1, T - 1] = 0.0
  pattern[2, 1, T - 1, 3] = 5.0  # layer 2, head 1: last position -> subject at 3
  pattern /= pattern.sum(-1, keepdims=True)
  assert factual_lib.find_mover_head(pattern, T - 1, 3) == {"layer": 2, "head": 1, "attention": 1.0}


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["causal_mean", "sequence_mean"])
def test_dla_sums_exactly_to_the_logit(tiny_cfg, pooling):
  routed, params, _, _ = _pair(tiny_cfg, layers=2, pooling=pooling, seed=1)
  rng = np.random.default_rng(1)
  params["final_norm"]["scale"][:] = rng.uniform(0.2, 3.0, params["final_norm"]["scale"].shape)
  params["blocks_1"]["attn"]["router"]["out"]["bias"][:] = rng.normal(0, 0.5, 16)
  tok = ByteTokenizer()
  capture = jax.jit(
    lambda p, t: forward(routed, p, t, capture=dla_lib.CAPTURE + ("blocks.*.attn.out",))
  )
  # One-token targets and no mean ablation: few distinct shapes to compile.
  prompts = [
    {"prompt": "The capital of France is", "target": "P", "subject": "France"},
    {"prompt": "Gold is", "target": "A", "subject": "Gold"},
  ]
  r = factual_lib.factual_recall(
    {"routed": routed}, {"routed": params}, tok, prompts, None, null_heads=False
  )
  for p, e in zip(prompts, r.models["routed"].prompts):
    ids = tok.encode(p["prompt"])
    logits, acts = capture(params, np.asarray([ids], np.int32))
    target, pos = e.target_ids[0], len(ids) - 1
    # Batched scoring (padded or grouped by length) equals the prompt's own forward.
    logp = jax.nn.log_softmax(logits[0, pos, :257])[target]
    assert e.as_trained.p_target == pytest.approx(float(np.exp(logp)), rel=1e-4)
    acts = {k: np.asarray(v[0]) for k, v in acts.items()}
    dla = dla_lib.direct_logit_attribution(routed.cfg, params, acts, pos, target)["dla"]
    parts = dla["embedding"] + dla["heads_raw"] + dla["routing_delta"] + dla["mlps"]
    assert parts == pytest.approx(float(logits[0, pos, target]), abs=1e-5)
    assert abs(dla["routing_delta"]) > 1e-4  # routing is on and does something here
    u = (
      acts["final_norm.scale"][pos, 0]
      * params["final_norm"]["scale"]
      * params["embed"]["embedding"][target]
    )
    for l, layer in enumerate(dla["per_layer"]):  # heads_raw + routing_delta = attention out
      assert sum(layer["heads_raw"]) + sum(layer["routing_delta"]) == pytest.approx(
        float(acts[f"blocks.{l}.attn.out"][pos] @ u), abs=1e-5
      )


# ----------------------------------------------------------------------------- steering


@pytest.mark.slow
def test_steering_on_trained_workdir(run):
  r = steering_lib.steering(run, top_n=6, top_k=5, num_batches=1)
  stored = json.loads(json.dumps(result_lib.to_json(r)))
  assert result_lib.from_json(steering_lib.Steering, stored) == r  # report.json, lossless
  assert r.model == "routed" and r.num_measured == 6 and len(r.directions) == 6
  norms = [d.readout_norm for d in r.directions]
  assert norms == sorted(norms, reverse=True)
  for d in r.directions:
    assert len(d.promoted) == 5 and len(d.suppressed) == 5
    assert _finite(result_lib.to_json(d.mass_promoted)) and 0 <= d.mean_r <= 1
  assert _finite(result_lib.to_json(r.summary))


@pytest.mark.slow
def test_steering_sign_on_hand_built_direction(tiny_cfg):
  """Plant direction (0, 0, 0) along head 0's mean output (coefficient > 0 on almost every
  token) and make head 0 dominate the logits: forcing r = 1 removes the component, so the
  tokens its readout promotes must lose probability mass, far beyond the null."""
  model, params, _, _ = _pair(tiny_cfg, layers=1)
  batches = _batches(257, n=1, T=32)
  params["blocks_0"]["mlp"]["wo"]["kernel"][:] = 0.0
  params["blocks_0"]["attn"]["out"]["kernel"][0] *= 30.0
  _, acts = jax.jit(lambda p, t: forward(model, p, t, capture=("blocks.0.attn.z",)))(
    params, batches[0]["inputs"]
  )
  mean_z = np.asarray(acts["blocks.0.attn.z"])[:, :, 0].mean((0, 1))
  chosen = [(0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2)]
  results = []
  for sign in (1.0, -1.0):  # d and -d remove the same component: orientation must agree
    params["blocks_0"]["attn"]["directions"][0, 0] = sign * mean_z
    results.append(
      steering_lib.steer_directions(model, params, batches, top_k=5, directions=chosen)
    )
  for r in results:
    d = r.directions[0]
    assert d.sign_agreement > 0.9
    promoted, suppressed = d.mass_promoted, d.mass_suppressed
    assert promoted.delta_r1_minus_r0 < 0 < suppressed.delta_r1_minus_r0
    assert abs(promoted.delta_r1_minus_r0) > 10 * abs(promoted.null_mean)
    assert promoted.z < -3 and suppressed.z > 3
  assert results[0].directions[0].promoted == results[1].directions[0].promoted
  assert results[0].directions[0].mean_coef == pytest.approx(
    -results[1].directions[0].mean_coef, rel=1e-4
  )
