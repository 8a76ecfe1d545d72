"""Induction, routing regimes and direction analyses: known answers on planted data, and each
analysis end to end on the trained tiny pair."""

import dataclasses
import json
import math

import jax
import numpy as np
import pytest

from dirroute_jax.analysis import directions as dir_lib
from dirroute_jax.analysis import induction as ind_lib
from dirroute_jax.analysis import regimes as reg_lib
from dirroute_jax.analysis import result as result_lib
from dirroute_jax.analysis.load import load_workdir


@pytest.fixture(scope="module")
def run(trained_workdir):
  return load_workdir(trained_workdir)


# ---------------------------------------------------------------- induction


def test_repeated_random_tokens_construction():
  pool = np.arange(100, 140)
  tokens = ind_lib.repeated_random_tokens(5, 12, 3, pool, seed=1)
  assert tokens.shape == (5, 36) and tokens.dtype == np.int32
  block = tokens[:, :12]
  np.testing.assert_array_equal(tokens[:, 12:24], block)
  np.testing.assert_array_equal(tokens[:, 24:], block)
  assert all(len(set(row)) == 12 for row in block)  # distinct: the previous occurrence is unique
  assert np.isin(tokens, pool).all()
  np.testing.assert_array_equal(tokens, ind_lib.repeated_random_tokens(5, 12, 3, pool, seed=1))


def test_induction_scores_planted_pattern():
  B, H, L = 2, 3, 20
  T = 2 * L
  causal = np.tril(np.ones((T, T)))
  pattern = np.broadcast_to(causal / causal.sum(1, keepdims=True), (B, H, T, T)).copy()
  pattern[:, 1] = 0.0  # head 1: a perfect induction head
  for t in range(T):
    pattern[:, 1, t, t - L + 1 if t >= L else t] = 1.0
  pattern[:, 2] = 0.0  # head 2: previous-token head
  for t in range(T):
    pattern[:, 2, t, max(t - 1, 0)] = 1.0
  scores = ind_lib.induction_scores(pattern, L)
  assert scores[1] == pytest.approx(1.0)
  assert scores[2] == pytest.approx(0.0)
  # Head 0 attends uniformly: exactly the uniform null, and small.
  assert scores[0] == pytest.approx(ind_lib.uniform_attention_score(T, L))
  assert scores[0] < 0.05


@pytest.mark.slow
def test_induction_end_to_end(run):
  out = ind_lib.induction(run, doc_len=16, num_seqs=16, seed=0)
  stored = json.loads(json.dumps(result_lib.to_json(out)))
  assert result_lib.from_json(ind_lib.Induction, stored) == out  # report.json, lossless
  L, H = run.cfg.model.num_layers, run.cfg.model.num_heads
  assert out.null.chance_accuracy == pytest.approx(1 / 256)  # bytes minus EOS
  assert out.protocol["scored_positions_per_seq"] == 32 - 1 - 16
  for name in ("routed", "baseline"):
    m = out.models[name]
    for key in (
      "accuracy",
      "first_block_accuracy",
      "accuracy_strongest_head_knocked_out",
      "knockout_control_median_other_heads",
      "strongest_score",
    ):
      assert 0.0 <= getattr(m, key) <= 1.0, (name, key)
    assert np.array(m.induction_scores).shape == (L, H)
    assert np.array(m.knockout_accuracy).shape == (L, H)
    l, h = m.strongest_head
    assert m.strongest_score == pytest.approx(np.max(m.induction_scores))
    assert m.accuracy_strongest_head_knocked_out == m.knockout_accuracy[l][h]
  assert 0.0 <= out.models["routed"].accuracy_routing_off <= 1.0
  assert out.models["baseline"].accuracy_routing_off is None  # no router: does not apply
  # Layer 0's attention pattern comes before any routing: routing off cannot change it.
  np.testing.assert_allclose(
    out.models["routed"].induction_scores_routing_off[0],
    out.models["routed"].induction_scores[0],
    rtol=1e-5,
  )


# ---------------------------------------------------------------- regimes


def _clusters(rng, n_per_class=30, num_classes=3, dim=8, separation=10.0):
  centres = rng.standard_normal((num_classes, dim)) * separation
  y = np.repeat(np.arange(num_classes), n_per_class)
  return centres[y] + rng.standard_normal((len(y), dim)), y


def test_loo_nearest_centroid_matches_brute_force():
  rng = np.random.default_rng(0)
  X, y = rng.standard_normal((25, 4)), rng.integers(0, 3, 25)
  expected = []
  for i in range(len(y)):
    keep = np.arange(len(y)) != i
    cents = np.stack([X[keep & (y == c)].mean(0) for c in range(3)])
    expected.append(np.argmin(((X[i] - cents) ** 2).sum(1)))
  np.testing.assert_array_equal(reg_lib.loo_nearest_centroid_predict(X, y), expected)


def test_nearest_centroid_planted_clusters_and_shuffled_null():
  rng = np.random.default_rng(1)
  X, y = _clusters(rng)
  assert reg_lib.nearest_centroid_accuracy(X, y) == 1.0
  null = reg_lib.permutation_null(lambda yp: reg_lib.nearest_centroid_accuracy(X, yp), y, 100)
  assert abs(null.mean() - 1 / 3) < 0.1
  assert np.quantile(null, 0.95) < 0.6


def test_specialists_finds_the_planted_head():
  rng = np.random.default_rng(2)
  heads, K, n_per_class = 5, 3, 40
  y = np.repeat(np.arange(3), n_per_class)
  X = rng.standard_normal((len(y), heads * K))
  X[:, 2 * K : 3 * K] += 1.5 * y[:, None]  # head 2 routes differently per domain
  out = reg_lib.specialists(X, y, groups_F=np.arange(heads * K) // K, permutations=200)
  assert out["specialist"] == [False, False, True, False, False]
  assert out["eta2"][2] > 0.5 and max(np.delete(out["eta2"], 2)) < out["threshold"]
  assert out["p_fwer"][2] == pytest.approx(1 / 201)


def test_domain_variance_known_answer():
  X = np.array([[0.0], [0.0], [1.0], [1.0]])
  y = np.array([0, 0, 1, 1])
  np.testing.assert_allclose(reg_lib.domain_variance(X, y), [0.25])  # means 0, 1


@pytest.mark.slow
def test_regimes_end_to_end(run):
  out = reg_lib.regimes(run, num_batches=6, permutations=50)
  stored = json.loads(json.dumps(result_lib.to_json(out)))
  assert result_lib.to_json(result_lib.from_json(reg_lib.Regimes, stored)) == stored  # lossless
  m = out.models["routed"]
  L, H = run.cfg.model.num_layers, run.cfg.model.num_heads
  assert out.models["baseline"].reason.startswith("n/a")
  assert m.num_windows == 48 and sum(m.windows_per_domain.values()) == 48
  assert len(m.domain_variance_per_layer) == L == len(m.domain_variance_null_p95)
  assert all(v >= 0 for v in m.domain_variance_per_layer)
  assert np.array(m.specialists.eta2).shape == (L, H)
  c = m.classification
  assert c.total == 48 and 0.0 <= c.accuracy <= 1.0 and 0.0 <= c.null_p95 <= 1.0
  assert np.array(c.confusion).sum() == 48


# ---------------------------------------------------------------- directions


def test_readout_planted_top_and_bottom_token():
  H, K, Dh, V = 2, 2, 4, 8
  E = np.eye(V)  # token j's embedding is e_j (D = V)
  dirs = np.zeros((H, K, Dh))
  dirs[1, 0, 0] = 3.0  # not unit: the readout must normalise it
  dirs[1, 1, 1] = 1.0
  dirs[0, :, 2] = 1.0
  w_o = np.zeros((H, Dh, V))
  w_o[1, 0, 5] = 1.0  # head 1, direction 0 writes token 5
  w_o[1, 1, 2] = -1.0  # head 1, direction 1 writes against token 2
  read = dir_lib.readout(dirs, w_o, E)
  assert read.shape == (H, K, V)
  top, _ = dir_lib.top_tokens(read[1, 0], 3)
  assert top[0] == 5 and read[1, 0, 5] == pytest.approx(1.0)
  _, bottom = dir_lib.top_tokens(read[1, 1], 3)
  assert bottom[0] == 2


@pytest.mark.slow
def test_cosine_null_matches_analytic():
  dim, n_per_layer, L, draws = 16, 8, 3, 300
  layer = np.repeat(np.arange(L), n_per_layer)
  null = dir_lib.random_cosine_null(dim, layer, L, draws=draws, seed=0)
  pairs = n_per_layer * n_per_layer  # per layer pair; the off-diagonal mean averages L(L-1)
  se = null["analytic_abs_cos_sd"] / math.sqrt(pairs * draws)  # conservative: blocks share
  assert abs(null["sampled_off_diagonal_abs_mean"] - null["analytic_abs_cos_mean"]) < 5 * se
  assert abs(null["sampled_off_diagonal_signed_mean"]) < 5 / math.sqrt(dim * pairs * draws)
  assert null["analytic_abs_cos_approx"] == pytest.approx(null["analytic_abs_cos_mean"], rel=0.05)
  # The exact E|cos| against a large direct sample.
  rng = np.random.default_rng(1)
  u, v = (dir_lib.random_unit_vectors(200_000, dim, rng) for _ in range(2))
  assert np.abs((u * v).sum(1)).mean() == pytest.approx(dir_lib.expected_abs_cos(dim), abs=0.003)


def test_directions_end_to_end_with_planted_direction(run):
  out = dir_lib.directions(run, top_k=5, null_draws=50)
  stored = json.loads(json.dumps(result_lib.to_json(out)))
  assert result_lib.from_json(dir_lib.Directions, stored) == out  # report.json, lossless
  m = out.models["routed"]
  L, H, K = (run.cfg.model.num_layers, run.cfg.model.num_heads, run.cfg.model.num_directions)
  assert out.models["baseline"].reason.startswith("n/a")
  assert len(m.readout) == L and len(m.readout[0]) == H and len(m.readout[0][0]) == K
  assert len(m.readout[0][0][0].top) == 5
  assert len(m.function_share_per_layer) == L == len(m.function_share_random_per_layer)
  cos = m.cosine
  assert np.array(cos.abs_mean).shape == (L, L)
  assert cos.null["analytic_abs_cos_mean"] == pytest.approx(
    dir_lib.expected_abs_cos(run.cfg.model.head_dim)
  )
  assert "random" in cos.verdict_abs and "random" in cos.note

  # Plant: layer 1, head 0, direction 0 writes token "Q", whose embedding is made the longest
  # (so by Cauchy-Schwarz no other token can read out higher).
  target = ord("Q")
  params = jax.tree.map(np.array, run.params["routed"])
  E = params["embed"]["embedding"]
  E[target] *= 10 * np.linalg.norm(E, axis=1).max() / np.linalg.norm(E[target])
  attn = params["blocks_1"]["attn"]
  d = attn["directions"][0, 0] / np.linalg.norm(attn["directions"][0, 0])
  attn["out"]["kernel"][0] = np.outer(d, E[target])
  planted = dataclasses.replace(run, params={**run.params, "routed": params})
  got = dir_lib.directions(planted, top_k=3, null_draws=10).models["routed"]
  assert got.readout[1][0][0].top_ids[0] == target
  assert got.readout[1][0][0].top[0] == "Q"
