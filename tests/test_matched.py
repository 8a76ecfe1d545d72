"""The parameter-matched baseline ("matched") in the joint step: it trains beside routed and
baseline in one executable, equals itself trained alone, and its widened MLP shards like the
others' (tiny's matched d_ff, 248, divides the tensor axis)."""

import chex
import jax
import numpy as np
import pytest

from dirroute_jax.model import params
from dirroute_jax.train import sharding, step


def _batch(cfg, s):
  x = np.random.default_rng(s).integers(
    0, 64, (cfg.batch_size, cfg.seq_len + 1), dtype=np.int32
  )  # a small alphabet: learnable fast
  return {
    "inputs": x[:, :-1],
    "targets": x[:, 1:],
    "weights": np.ones((cfg.batch_size, cfg.seq_len), np.float32),
  }


def _train(cfg, devices, steps):
  mesh = sharding.make_mesh(cfg.mesh, devices)
  trainer = step.make_trainer(cfg, mesh)
  with jax.set_mesh(mesh):
    state = trainer.init_state(jax.random.key(cfg.seed))
    losses = []
    for s in range(steps):
      state, metrics = trainer.train_step(
        state, jax.device_put(_batch(cfg, s % 2), trainer.batch_sharding)
      )
      losses.append(
        {k: float(v) for k, v in jax.device_get(metrics).items() if k.endswith("/loss")}
      )
  return trainer, jax.device_get(state), losses


@pytest.fixture
def trio_cfg(tiny_cfg):
  cfg = tiny_cfg
  cfg.models = "routed,baseline,matched"
  cfg.seq_len, cfg.batch_size, cfg.steps, cfg.optim.warmup_steps = 32, 16, 10, 2
  return cfg


@pytest.mark.slow
def test_matched_trains_in_the_joint_step_and_equals_itself_alone(trio_cfg):
  trainer, trio, losses = _train(trio_cfg, jax.devices()[:1], steps=8)
  assert trainer.train_step._cache_size() == 1  # one executable for the three models
  n = {
    name: sum(x.size for x in jax.tree.leaves(trio["models"][name]["params"]))
    for name in trainer.models
  }
  assert abs(n["matched"] - n["routed"]) <= 1.5 * trio_cfg.model.d_model * trio_cfg.model.num_layers
  assert n["matched"] == params.count_params(trainer.models["matched"].cfg).total
  for name in ("routed", "baseline", "matched"):
    assert losses[-1][f"{name}/loss"] < losses[0][f"{name}/loss"] - 0.5, (name, losses)
  trio_cfg.models = "matched"
  _, alone, alone_losses = _train(trio_cfg, jax.devices()[:1], steps=8)
  chex.assert_trees_all_close(
    trio["models"]["matched"], alone["models"]["matched"], atol=1e-6, rtol=0
  )
  assert alone_losses[-1]["matched/loss"] == pytest.approx(losses[-1]["matched/loss"], abs=1e-6)


@pytest.mark.slow
def test_matched_sharded_with_tensor_parallelism_equals_single_device(trio_cfg):
  if len(jax.devices()) < 8:
    pytest.skip("needs 8 (fake) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
  trio_cfg.models = "baseline,matched"  # routed is covered by test_train_step's sharded test
  _, single, single_losses = _train(trio_cfg, jax.devices()[:1], steps=2)
  trio_cfg.mesh.update(dict(data=2, fsdp=2, tensor=-1))  # the widened MLP split over tensor
  _, sharded, sharded_losses = _train(trio_cfg, jax.devices()[:8], steps=2)
  chex.assert_trees_all_close(single["models"], sharded["models"], atol=1e-5, rtol=0)
  assert sharded_losses[-1]["matched/loss"] == pytest.approx(
    single_losses[-1]["matched/loss"], abs=1e-5
  )
