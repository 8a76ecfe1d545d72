"""S-D attention: the operator's spectrum, training as a third model, no-norm training, and
post-hoc ELU+1 linearisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dirroute_jax.model.attention import causal_linear_attention, sd_operator
from dirroute_jax.model.transformer import build_model, forward, init_params
from dirroute_jax.train import sharding, step


def test_sd_operator_eigenvalues_have_nonpositive_real_part():
  rng = np.random.default_rng(0)
  skew = jnp.asarray(rng.normal(size=(6, 16, 16)) * 3.0, jnp.float32)
  diag = jnp.asarray(rng.normal(size=(6, 16)) * 5.0, jnp.float32)
  op = np.asarray(sd_operator(skew, diag), np.float64)
  for h in range(6):
    eig = np.linalg.eigvals(op[h])
    assert eig.real.max() <= 1e-6
    sym = (op[h] + op[h].T) / 2
    np.testing.assert_allclose(np.diag(sym), -np.log1p(np.exp(np.asarray(diag[h]))), rtol=1e-5)
    np.testing.assert_allclose(sym - np.diag(np.diag(sym)), 0.0, atol=1e-6)


def test_linear_attention_is_causal_and_normalised():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 7, 3, 4)), jnp.float32) for _ in range(3))
  o, w = causal_linear_attention(q, k, v)
  w = np.asarray(w)
  assert np.all(np.triu(np.ones((7, 7)), k=1) * w == 0.0) and np.all(w >= 0)
  np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
  phi = lambda x: np.where(x > 0, x + 1, np.exp(x))
  qf, kf = phi(np.asarray(q[0, :, 1])), phi(np.asarray(k[0, :, 1]))
  s = np.tril(qf @ kf.T)
  np.testing.assert_allclose(
    np.asarray(o[0, :, 1]),
    (s / s.sum(-1, keepdims=True)) @ np.asarray(v[0, :, 1]),
    rtol=1e-4,
    atol=1e-5,
  )


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["rms", "none"])
def test_sd_model_trains_as_third_model(tiny_cfg, norm):
  cfg = tiny_cfg
  cfg.models, cfg.model.norm = "routed,baseline,sd", norm
  cfg.seq_len, cfg.batch_size, cfg.steps, cfg.optim.warmup_steps = 32, 8, 10, 2
  trainer = step.make_trainer(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1]))
  sd_params = jax.eval_shape(trainer.init_state, jax.random.key(0))["models"]["sd"]["params"]
  assert "skew" in sd_params["blocks_0"]["attn"] and "key" not in sd_params["blocks_0"]["attn"]
  x = np.random.default_rng(0).integers(0, 64, (8, 33), dtype=np.int32)  # a small alphabet
  batch = {"inputs": x[:, :-1], "targets": x[:, 1:], "weights": np.ones((8, 32), np.float32)}
  with jax.set_mesh(trainer.mesh):
    state = trainer.init_state(jax.random.key(0))
    losses = []
    for _ in range(10):
      state, metrics = trainer.train_step(state, batch)
      losses.append({k: float(v) for k, v in metrics.items() if k.endswith("/loss")})
  assert trainer.train_step._cache_size() == 1
  # Without any norm the tiny-init residual stream makes every model start slowly; the claim
  # tested there is that it trains at all, stably.
  drop = 0.5 if norm == "rms" else 0.01
  for name in ("routed", "baseline", "sd"):
    assert np.isfinite(losses[-1][f"{name}/loss"])
    assert losses[-1][f"{name}/loss"] < losses[0][f"{name}/loss"] - drop, (name, losses)


def test_linearising_layers_changes_only_those_layers(tiny_cfg):
  model = build_model(tiny_cfg.model)
  params = init_params(model, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, tiny_cfg.model.vocab_size)
  names = ("blocks.*.attn.pattern", "blocks.*.resid_pre")
  _, soft = forward(model, params, tokens, capture=names)
  _, lin = forward(model, params, tokens, capture=names, linear_layers=1)
  np.testing.assert_array_equal(
    np.asarray(lin["blocks.0.resid_pre"]), np.asarray(soft["blocks.0.resid_pre"])
  )
  assert float(jnp.abs(lin["blocks.0.attn.pattern"] - soft["blocks.0.attn.pattern"]).max()) > 1e-3
  assert float(jnp.abs(lin["blocks.1.resid_pre"] - soft["blocks.1.resid_pre"]).max()) > 1e-4
