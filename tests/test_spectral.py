"""Skew/symmetric split of W_Q W_K^T: planted kernels with known answers, the RoPE convention
against the model's own `rope`, the random null, and the report section on the trained pair."""

import math

import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from dirroute_jax.analysis import report
from dirroute_jax.analysis import spectral as sp
from dirroute_jax.analysis.load import load_workdir
from dirroute_jax.model.attention import rope

D, Dh = 24, 8
J_2x2 = np.array([[0.0, -1.0], [1.0, 0.0]])


def _planted(lams, symmetric=False, seed=0):
  """W_Q, W_K (D x Dh) with M = U blockdiag(lam_i J) U^T (skew), or U diag U^T (symmetric)."""
  rng = np.random.default_rng(seed)
  u_DxD, _ = np.linalg.qr(rng.standard_normal((D, D)))
  wq, wk = np.zeros((D, Dh)), np.zeros((D, Dh))
  for i, lam in enumerate(lams):
    plane_Dx2 = u_DxD[:, 2 * i : 2 * i + 2]
    wq[:, 2 * i : 2 * i + 2] = lam * plane_Dx2
    wk[:, 2 * i : 2 * i + 2] = plane_Dx2 if symmetric else plane_Dx2 @ J_2x2.T
  return wq[None], wk[None]


def _one(stats):
  return {k: float(v[0]) for k, v in stats.items()}


def test_pure_skew_rank_two():
  s = _one(sp.head_stats(*_planted([3.0])))
  assert s["skew_share"] == pytest.approx(1.0, abs=1e-12)
  assert s["sym_share"] == pytest.approx(0.0, abs=1e-12)
  assert s["skew_erank"] == pytest.approx(2.0, abs=1e-9)
  assert s["skew_rank90"] == 2 and s["sym_erank"] == 0.0


def test_skew_ranks_of_two_planes():
  equal = _one(sp.head_stats(*_planted([1.0, 1.0])))
  assert equal["skew_erank"] == pytest.approx(4.0, abs=1e-9) and equal["skew_rank90"] == 4
  # Singular values (3, 3, 0.5, 0.5): the first plane holds 18 / 18.5 > 90% of the energy.
  uneven = _one(sp.head_stats(*_planted([3.0, 0.5])))
  p = np.array([3, 3, 0.5, 0.5]) / 7.0
  assert uneven["skew_erank"] == pytest.approx(math.exp(-np.sum(p * np.log(p))), abs=1e-9)
  assert uneven["skew_rank90"] == 2


def test_pure_symmetric():
  s = _one(sp.head_stats(*_planted([2.0, 1.0], symmetric=True)))
  assert s["skew_share"] == pytest.approx(0.0, abs=1e-12)
  assert s["sym_share"] == pytest.approx(1.0, abs=1e-12)
  assert s["skew_erank"] == 0.0 and s["skew_rank90"] == 0
  p = np.array([2, 2, 1, 1]) / 6.0
  assert s["sym_erank"] == pytest.approx(math.exp(-np.sum(p * np.log(p))), abs=1e-9)


def test_mean_rope_rotation_matches_the_model_rope():
  """q_t . k_s after the model's RoPE equals q^T R(-(t - s)) k for every pair (t, s)."""
  T, H, theta = 6, 1, 100.0
  rng = np.random.default_rng(1)
  q_Dh, k_Dh = rng.standard_normal((2, Dh))
  rq_TxDh = np.asarray(
    rope(jnp.broadcast_to(jnp.asarray(q_Dh, jnp.float32), (1, T, H, Dh)), theta)
  )[0, :, 0]
  rk_TxDh = np.asarray(
    rope(jnp.broadcast_to(jnp.asarray(k_Dh, jnp.float32), (1, T, H, Dh)), theta)
  )[0, :, 0]
  for t in range(T):
    for s in range(T):
      r_DhxDh = sp.mean_rope_rotation(Dh, theta, [t - s])
      assert rq_TxDh[t] @ rk_TxDh[s] == pytest.approx(q_Dh @ r_DhxDh @ k_Dh, abs=1e-4)


@pytest.mark.parametrize("T", [2, 3, 7, 64])
def test_offset_averaged_rope_skew_share_by_hand(T):
  """One rotary pair (w = 1), W_Q = W_K = I: Rbar = |z| R(-(T-1)/2), skew share
  sin^2((T - 1)/2); averaged over +-delta instead, the skew part vanishes."""
  eye = np.eye(2)[None]
  rbar = sp.mean_rope_rotation(2, 10_000.0, np.arange(T))
  assert _one(sp.head_stats(eye @ rbar, eye))["skew_share"] == pytest.approx(
    math.sin((T - 1) / 2) ** 2, abs=1e-9
  )
  two_sided = sp.mean_rope_rotation(2, 10_000.0, np.arange(-(T - 1), T))
  s = _one(sp.head_stats(eye @ two_sided, eye))
  assert s["skew_share"] == pytest.approx(0.0, abs=1e-12) and s["skew_erank"] == 0.0


def test_random_null_skew_share_is_about_half():
  rng = np.random.default_rng(2)
  wq, wk = rng.standard_normal((2, 64, 64, 16))
  s = sp.head_stats(wq, wk)
  assert np.mean(s["skew_share"]) == pytest.approx((1 - 1 / 64) / 2, abs=0.01)
  np.testing.assert_allclose(s["skew_share"] + s["sym_share"], 1.0, atol=1e-12)
  assert 0.75 * 32 < np.mean(s["skew_erank"]) <= 32  # near the maximum rank 2 Dh


@pytest.fixture(scope="module")
def run(trained_workdir):
  return load_workdir(trained_workdir)


def test_spectral_on_trained_pair_and_report(run, tmp_path):
  results = report.run_analyses(run, ["spectral"], log=lambda *a: None)
  r = results["spectral"]
  L, H = run.cfg.model.num_layers, run.cfg.model.num_heads
  for name in ("routed", "baseline"):
    for view in ("offset0", "offset_mean"):
      v = r.models[name].view(view)
      for key, heads_LxH in v.heads.items():
        arr = np.asarray(heads_LxH, float)
        assert arr.shape == (L, H) and np.all(np.isfinite(arr)), (name, view, key)
      np.testing.assert_allclose(
        np.add(v.heads["skew_share"], v.heads["sym_share"]), 1.0, atol=1e-9
      )
      assert len(v.per_layer["skew_erank"]) == L
  assert 0.4 < r.null.offset0["skew_share"].mean < 0.6
  assert r.null.max_rank == min(run.cfg.model.d_model, 2 * run.cfg.model.head_dim)
  assert r.protocol["offsets_T"] == run.cfg.seq_len

  paths = report.write_report(results, run, str(tmp_path))
  md = open(paths["md"]).read()
  assert "## spectral" in md and "routed skew erank" in md and "](spectral_cascade.png)" in md
  image = matplotlib.image.imread(paths["spectral_cascade"])
  assert image.shape[0] > 200 and image.shape[1] > 300 and np.std(image[..., :3]) > 0.05
