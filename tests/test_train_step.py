"""The joint step: one executable for the pair, equal to training each model alone; sharded
steps equal single-device steps; accumulation equals the full batch; LR groups and decay."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dirroute_jax.config import ConfigError, load_config_file, validate_config
from dirroute_jax.model.variants import model_configs
from dirroute_jax.train import sharding, step
from dirroute_jax.train.optimizer import make_optimizer


def _small(cfg):
  cfg.seq_len, cfg.batch_size, cfg.steps = 32, 8, 10
  cfg.optim.warmup_steps = 2
  return cfg


def _batch(cfg, s):
  x = np.random.default_rng(s).integers(
    0, cfg.model.vocab_size, (cfg.batch_size, cfg.seq_len + 1), dtype=np.int32
  )
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


@pytest.mark.slow
def test_pair_is_one_executable_and_equals_each_model_alone(tiny_cfg):
  cfg = _small(tiny_cfg)
  trainer, pair, history, _ = _train(cfg, jax.devices()[:1])
  assert trainer.train_step._cache_size() == 1  # compiled once, for both models
  hlo = trainer.train_step.lower(
    trainer.abstract_state(),
    {
      k: jax.ShapeDtypeStruct((8, 32), v.dtype, sharding=trainer.batch_sharding)
      for k, v in _batch(cfg, 0).items()
    },
  ).as_text()
  assert hlo.count("func.func public @main") == 1
  assert set(history[-1]) >= {
    "routed/loss",
    "baseline/loss",
    "delta/loss",
    "routed/router/mean",
    "baseline/grad_norm",
    "routed/lr",
  }
  for name in ("routed", "baseline"):
    cfg.models = name
    _, alone, alone_hist, _ = _train(cfg, jax.devices()[:1])
    chex.assert_trees_all_close(pair["models"][name], alone["models"][name], atol=1e-6, rtol=0)
    assert alone_hist[-1][f"{name}/loss"] == pytest.approx(history[-1][f"{name}/loss"], abs=1e-6)


@pytest.mark.slow
def test_pair_starts_from_identical_shared_weights(tiny_cfg):
  _, pair, _, _ = _train(_small(tiny_cfg), jax.devices()[:1], steps=0)
  routed, base = pair["models"]["routed"]["params"], pair["models"]["baseline"]["params"]
  np.testing.assert_array_equal(routed["embed"]["embedding"], base["embed"]["embedding"])
  np.testing.assert_array_equal(
    routed["blocks_1"]["mlp"]["wo"]["kernel"], base["blocks_1"]["mlp"]["wo"]["kernel"]
  )


@pytest.mark.slow
def test_grad_accumulation_equals_full_batch(tiny_cfg):
  cfg = _small(tiny_cfg)
  _, full, full_hist, _ = _train(cfg, jax.devices()[:1], steps=2)
  cfg.grad_accum_steps = 4
  _, accum, accum_hist, _ = _train(cfg, jax.devices()[:1], steps=2)
  chex.assert_trees_all_close(full["models"], accum["models"], atol=2e-6, rtol=0)
  assert accum_hist[-1]["routed/loss"] == pytest.approx(full_hist[-1]["routed/loss"], abs=1e-5)


# One rules table; the mesh sizes decide the placement. The query kernel is D x H x Dh =
# 64 x 4 x 16 and the MLP's up projection D x F = 64 x 176: fsdp splits D, tensor splits H and F.
@pytest.mark.parametrize(
  "mesh,q_shard,mlp_shard",
  [
    (dict(data=-1, fsdp=1, tensor=1), (64, 4, 16), (64, 176)),  # data parallel: replicated
    (dict(data=2, fsdp=-1, tensor=1), (16, 4, 16), (16, 176)),  # fsdp 4
    (dict(data=2, fsdp=2, tensor=-1), (32, 2, 16), (32, 88)),  # fsdp 2 x tensor 2
  ],
)
@pytest.mark.slow
def test_sharded_step_equals_single_device(tiny_cfg, mesh, q_shard, mlp_shard):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
  cfg = _small(tiny_cfg)
  cfg.batch_size, cfg.grad_accum_steps = 16, 2
  _, single, single_hist, _ = _train(cfg, jax.devices()[:1], steps=2)
  cfg.mesh.update(mesh)
  trainer, sharded, sharded_hist, live = _train(cfg, jax.devices()[:8], steps=2)
  assert trainer.train_step._cache_size() == 1
  chex.assert_trees_all_close(single["models"], sharded["models"], atol=1e-5, rtol=0)
  assert sharded_hist[-1]["baseline/loss"] == pytest.approx(
    single_hist[-1]["baseline/loss"], abs=1e-5
  )
  p = live["models"]["routed"]["params"]
  q = p["blocks_0"]["attn"]["query"]["kernel"]
  mlp = p["blocks_0"]["mlp"]["wi_up"]["kernel"]
  assert q.addressable_shards[0].data.shape == q_shard
  assert mlp.addressable_shards[0].data.shape == mlp_shard
  # Adam's moments are placed like their parameters.
  mu = live["models"]["routed"]["opt_state"][1].inner_states["base"].inner_state[0].mu
  assert mu["blocks_0"]["attn"]["query"]["kernel"].sharding.is_equivalent_to(q.sharding, 3)


def test_a_size_one_mesh_axis_shards_nothing(tiny_cfg):
  cfg = _small(tiny_cfg)
  shardings = step.make_trainer(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:8]))
  for leaf in jax.tree.leaves(shardings.state_shardings):
    assert leaf.is_fully_replicated  # data=-1: every parameter on every device


def test_removed_mesh_preset_is_a_clear_error(tiny_cfg):
  tiny_cfg.mesh.preset = "fsdp"
  for check in (validate_config, lambda c: sharding.make_mesh(c.mesh)):
    with pytest.raises(ConfigError, match=r"mesh.preset='fsdp' was removed.*mesh.fsdp=-1"):
      check(tiny_cfg)


def test_indivisible_dimension_is_a_clear_error_before_compiling(tiny_cfg):
  cfg = _small(tiny_cfg)
  cfg.models, cfg.model.d_ff = "baseline", 175
  cfg.mesh.update(dict(data=1, fsdp=4, tensor=2))
  with pytest.raises(
    ConfigError,
    match=r"'baseline' model's MLP width d_ff of 175 does not "
    r"divide over mesh.tensor=2 .*blocks_0/mlp/wi_gate/kernel.*mesh.tensor=1",
  ):
    step.make_trainer(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:8]))
  # The paper's size: the parameter-matched baseline's d_ff of 4387 (prime factors 41 x 107).
  cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "433m.py"))
  cfg.models = "routed,baseline,matched"
  cfg.mesh.update(dict(data=1, fsdp=4, tensor=2))
  with pytest.raises(ConfigError, match="'matched' model's MLP width d_ff of 4387"):
    step.make_trainer(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:8]))


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
    model_configs(tiny_cfg)


def test_routing_params_get_half_lr_and_no_decay(tiny_cfg):
  cfg = tiny_cfg
  cfg.optim.warmup_steps, cfg.optim.peak_lr, cfg.optim.final_lr = 0, 1e-2, 1e-2
  cfg.optim.grad_clip = 1e9
  params = {
    "blocks_0": {
      "attn": {
        "query": {"kernel": jnp.ones((4, 2, 2))},
        "directions": jnp.ones((2, 2, 2)),
        "router": {"out": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones((4,))}},
      },
      "attn_norm": {"scale": jnp.ones((4,))},
    }
  }
  tx = make_optimizer(cfg.optim, total_steps=10)
  grads = jax.tree.map(jnp.zeros_like, params)  # zero grads: the update is decay alone
  updates, _ = tx.update(grads, tx.init(params), params)
  lr, wd = 1e-2, cfg.optim.weight_decay
  np.testing.assert_allclose(updates["blocks_0"]["attn"]["query"]["kernel"], -lr * wd, rtol=1e-5)
  np.testing.assert_allclose(
    updates["blocks_0"]["attn"]["router"]["out"]["kernel"], -0.5 * lr * wd, rtol=1e-5
  )
  for no_decay in (
    updates["blocks_0"]["attn"]["directions"],
    updates["blocks_0"]["attn"]["router"]["out"]["bias"],
    updates["blocks_0"]["attn_norm"]["scale"],
  ):
    np.testing.assert_array_equal(no_decay, 0.0)
  # With gradients, Adam's first step moves every weight by ~lr (x0.5 for routing).
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), jax.tree.map(jnp.zeros_like, params))
  np.testing.assert_allclose(updates["blocks_0"]["attn"]["directions"], -0.5 * lr, rtol=1e-4)
  np.testing.assert_allclose(updates["blocks_0"]["attn_norm"]["scale"], -lr, rtol=1e-4)
  assert optax.tree.norm(updates) > 0
