"""The joint step: one executable for the pair, equal to training each model alone; sharded
steps equal single-device steps; accumulation equals the full batch; LR groups and decay."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dirroute_jax.config import ConfigError
from dirroute_jax.train import sharding, step
from dirroute_jax.train.optimizer import make_optimizer


def _small(cfg):
  cfg.seq_len, cfg.batch_size, cfg.steps = 32, 8, 10
  cfg.optim.warmup_steps = 2
  return cfg


def _batch(cfg, s):
  x = np.random.default_rng(s).integers(0, cfg.model.vocab_size,
                                        (cfg.batch_size, cfg.seq_len + 1), dtype=np.int32)
  w = np.ones((cfg.batch_size, cfg.seq_len), np.float32)
  w[0, -5:] = 0.0  # padding in one row: the loss must average over real tokens only
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "weights": w}


def _train(cfg, devices, steps=3):
  mesh = sharding.make_mesh(cfg.mesh, devices)
  trainer = step.make_trainer(cfg, mesh)
  with jax.set_mesh(mesh):
    state = trainer.init_state(jax.random.key(cfg.seed))
    history = []
    for s in range(steps):
      batch = jax.device_put(_batch(cfg, s), trainer.batch_sharding)
      state, metrics = trainer.train_step(state, batch)
      history.append(jax.device_get(metrics))
  return trainer, jax.device_get(state), history, state


def _max_diff(a, b):
  return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.abs(x - y).max()), a, b)))


def test_pair_is_one_executable_and_equals_each_model_alone(tiny_cfg):
  cfg = _small(tiny_cfg)
  trainer, pair, history, _ = _train(cfg, jax.devices()[:1])
  assert trainer.train_step._cache_size() == 1  # compiled once, for both models
  hlo = trainer.train_step.lower(
      trainer.abstract_state(),
      {k: jax.ShapeDtypeStruct((8, 32), v.dtype, sharding=trainer.batch_sharding)
       for k, v in _batch(cfg, 0).items()}).as_text()
  assert hlo.count("func.func public @main") == 1
  assert set(history[-1]) >= {"routed/loss", "baseline/loss", "delta/loss",
                              "routed/router/mean", "baseline/grad_norm", "routed/lr"}
  for name in ("routed", "baseline"):
    cfg.models = name
    _, alone, alone_hist, _ = _train(cfg, jax.devices()[:1])
    assert _max_diff(pair["models"][name], alone["models"][name]) < 1e-6
    assert alone_hist[-1][f"{name}/loss"] == pytest.approx(history[-1][f"{name}/loss"],
                                                           abs=1e-6)


def test_pair_starts_from_identical_shared_weights(tiny_cfg):
  _, pair, _, _ = _train(_small(tiny_cfg), jax.devices()[:1], steps=0)
  routed, base = pair["models"]["routed"]["params"], pair["models"]["baseline"]["params"]
  np.testing.assert_array_equal(routed["embed"]["embedding"], base["embed"]["embedding"])
  np.testing.assert_array_equal(routed["blocks_1"]["mlp"]["wo"]["kernel"],
                                base["blocks_1"]["mlp"]["wo"]["kernel"])


def test_grad_accumulation_equals_full_batch(tiny_cfg):
  cfg = _small(tiny_cfg)
  _, full, full_hist, _ = _train(cfg, jax.devices()[:1], steps=2)
  cfg.grad_accum_steps = 4
  _, accum, accum_hist, _ = _train(cfg, jax.devices()[:1], steps=2)
  assert _max_diff(full["models"], accum["models"]) < 2e-6
  assert accum_hist[-1]["routed/loss"] == pytest.approx(full_hist[-1]["routed/loss"], abs=1e-5)


@pytest.mark.parametrize("preset,mesh", [("dp", dict(data=-1, fsdp=1, tensor=1)),
                                         ("fsdp", dict(data=2, fsdp=-1, tensor=1)),
                                         ("fsdp_tp", dict(data=2, fsdp=2, tensor=-1))])
def test_sharded_step_equals_single_device(tiny_cfg, preset, mesh):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
  cfg = _small(tiny_cfg)
  cfg.batch_size, cfg.grad_accum_steps = 16, 2
  _, single, single_hist, _ = _train(cfg, jax.devices()[:1], steps=2)
  cfg.mesh.preset = preset
  cfg.mesh.update(mesh)
  trainer, sharded, sharded_hist, live = _train(cfg, jax.devices()[:8], steps=2)
  assert trainer.train_step._cache_size() == 1
  assert _max_diff(single["models"], sharded["models"]) < 1e-5
  assert sharded_hist[-1]["baseline/loss"] == pytest.approx(
      single_hist[-1]["baseline/loss"], abs=1e-5)
  # Placement follows the preset's rules table.
  p = live["models"]["routed"]["params"]
  q_spec = p["blocks_0"]["attn"]["query"]["kernel"].sharding.spec
  mlp_spec = p["blocks_0"]["mlp"]["wi_up"]["kernel"].sharding.spec
  mu = live["models"]["routed"]["opt_state"][1].inner_states["base"].inner_state[0].mu
  expected_q = {"dp": (None, None, None), "fsdp": ("fsdp", None, None),
                "fsdp_tp": ("fsdp", "tensor", None)}[preset]
  assert tuple(q_spec) == expected_q
  assert tuple(mlp_spec) == {"dp": (None, None), "fsdp": ("fsdp", None),
                             "fsdp_tp": ("fsdp", "tensor")}[preset]
  assert mu["blocks_0"]["attn"]["query"]["kernel"].sharding.spec == q_spec
  shard = p["blocks_0"]["attn"]["query"]["kernel"].addressable_shards[0].data.shape
  assert shard[0] == {"dp": 64, "fsdp": 16, "fsdp_tp": 32}[preset]


def test_batch_not_divisible_by_data_parallel_size_is_a_clear_error(tiny_cfg):
  cfg = _small(tiny_cfg)
  cfg.batch_size = 12
  mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:8])
  with pytest.raises(ConfigError, match="multiple of 8"):
    step.make_trainer(cfg, mesh)
  with pytest.raises(ConfigError, match="needs 6 devices"):
    cfg.mesh.update(dict(data=3, fsdp=2, tensor=1))
    sharding.make_mesh(cfg.mesh, jax.devices()[:8])


def test_unknown_model_name_is_a_clear_error(tiny_cfg):
  tiny_cfg.models = "routed,mamba"
  with pytest.raises(ConfigError, match="models="):
    step.model_configs(tiny_cfg)


def test_routing_params_get_half_lr_and_no_decay(tiny_cfg):
  cfg = tiny_cfg
  cfg.optim.warmup_steps, cfg.optim.peak_lr, cfg.optim.final_lr = 0, 1e-2, 1e-2
  cfg.optim.grad_clip = 1e9
  params = {"blocks_0": {"attn": {"query": {"kernel": jnp.ones((4, 2, 2))},
                                  "directions": jnp.ones((2, 2, 2)),
                                  "router": {"out": {"kernel": jnp.ones((4, 4)),
                                                     "bias": jnp.ones((4,))}}},
                         "attn_norm": {"scale": jnp.ones((4,))}}}
  tx = make_optimizer(cfg.optim, total_steps=10)
  grads = jax.tree.map(jnp.zeros_like, params)  # zero grads: the update is decay alone
  updates, _ = tx.update(grads, tx.init(params), params)
  lr, wd = 1e-2, cfg.optim.weight_decay
  np.testing.assert_allclose(updates["blocks_0"]["attn"]["query"]["kernel"], -lr * wd, rtol=1e-5)
  np.testing.assert_allclose(updates["blocks_0"]["attn"]["router"]["out"]["kernel"],
                             -0.5 * lr * wd, rtol=1e-5)
  for no_decay in (updates["blocks_0"]["attn"]["directions"],
                   updates["blocks_0"]["attn"]["router"]["out"]["bias"],
                   updates["blocks_0"]["attn_norm"]["scale"]):
    np.testing.assert_array_equal(no_decay, 0.0)
  # With gradients, Adam's first step moves every weight by ~lr (x0.5 for routing).
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), jax.tree.map(jnp.zeros_like, params))
  np.testing.assert_allclose(updates["blocks_0"]["attn"]["directions"], -0.5 * lr, rtol=1e-4)
  np.testing.assert_allclose(updates["blocks_0"]["attn_norm"]["scale"], -lr, rtol=1e-4)
  assert optax.tree.norm(updates) > 0
