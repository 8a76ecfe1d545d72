"""The ahead-of-time plan: compiles on fake devices without allocating, and its per-device
state bytes equal the numbers computed by hand from the tiny config's shapes."""

import os
import subprocess
import sys

import jax
import pytest

from dirroute_jax.train import plan as plan_lib
from dirroute_jax.train import sharding, step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = 4


def _hand_counts(m):
  """(params with a d_model axis, params without) for the baseline and the routing extras.

  fsdp shards exactly the leaves with a d_model ("embed") axis: the embedding, Q/K/V/O, the
  SwiGLU matrices and the router's first layer. Norm scales, the rest of the router and the
  directions stay replicated.
  """
  d, L, H, Dh, F, V = m.d_model, m.num_layers, m.num_heads, m.head_dim, m.d_ff, m.vocab_size
  R, K = m.router_hidden, m.num_directions
  base = (V * d + L * (4 * d * H * Dh + 3 * d * F), (2 * L + 1) * d)
  routing = (
    L * d * R,
    L
    * (
      (m.router_depth - 1) * R * R
      + R * H * K  # kernels
      + m.router_depth * R
      + H * K  # biases
      + H * K * Dh
    ),
  )  # directions
  return base, routing


def _state_bytes(cfg, mesh):
  trainer = step.make_trainer(cfg, mesh)
  models = trainer.abstract_state()["models"]
  return {
    n: (plan_lib.bytes_per_device(s["params"]), plan_lib.bytes_per_device(s["opt_state"]))
    for n, s in models.items()
  }


def test_hand_counts_match_the_parameter_total(tiny_cfg):
  (b_sh, b_rep), (r_sh, r_rep) = _hand_counts(tiny_cfg.model)
  plan_counts = {
    n: sum(x.size for x in jax.tree.leaves(s["params"]))
    for n, s in step.make_trainer(tiny_cfg, sharding.make_mesh(tiny_cfg.mesh))
    .abstract_state()["models"]
    .items()
  }
  assert plan_counts == {"baseline": b_sh + b_rep, "routed": b_sh + b_rep + r_sh + r_rep}


def test_dp_holds_everything_and_fsdp_splits_d_model(tiny_cfg):
  (b_sh, b_rep), (r_sh, r_rep) = _hand_counts(tiny_cfg.model)
  dp = _state_bytes(tiny_cfg, sharding.make_mesh(tiny_cfg.mesh))
  assert dp["baseline"][0] == F32 * (b_sh + b_rep)
  assert dp["routed"][0] == F32 * (b_sh + b_rep + r_sh + r_rep)

  tiny_cfg.mesh.data, tiny_cfg.mesh.fsdp = 1, -1
  fsdp = _state_bytes(tiny_cfg, sharding.make_mesh(tiny_cfg.mesh))
  assert fsdp["baseline"][0] == F32 * (b_sh // 8 + b_rep)
  assert fsdp["routed"][0] == F32 * ((b_sh + r_sh) // 8 + b_rep + r_rep)
  for params, opt in (*dp.values(), *fsdp.values()):
    assert 2 * params <= opt <= 2 * params + 64  # Adam's two moments + scalar counters


@pytest.mark.slow
def test_compiled_plan_on_8_devices(tiny_cfg):
  tiny_cfg.mesh.data, tiny_cfg.mesh.fsdp = 1, -1
  tiny_cfg.grad_accum_steps = 2
  plan = plan_lib.make_plan(tiny_cfg, jax.devices()[:8])
  (b_sh, b_rep), (r_sh, r_rep) = _hand_counts(tiny_cfg.model)
  assert plan.mesh == {"dcn_data": 1, "data": 1, "fsdp": 8, "tensor": 1}
  assert plan.params_bytes == {
    "baseline": F32 * (b_sh // 8 + b_rep),
    "routed": F32 * ((b_sh + r_sh) // 8 + b_rep + r_rep),
  }
  # XLA's arguments are this device's state plus its rows of the batch (3 x [B/8, T] x 4 B);
  # the state is donated, so outputs alias it.
  batch = 3 * tiny_cfg.batch_size // 8 * tiny_cfg.seq_len * 4
  assert plan.argument_bytes == pytest.approx(plan.state_bytes + batch, rel=1e-3)
  assert plan.alias_bytes == pytest.approx(plan.state_bytes, rel=1e-3)
  assert plan.temp_bytes > 0 and plan.peak_bytes > plan.state_bytes
  # XLA's count (loop body x micro-batches) and the written FLOP convention agree roughly.
  assert 0.7 < plan.flops_per_device * 8 / plan.model_flops < 1.5
  assert plan_lib.fits(plan, "v5e") == (True, 16 * 1024**3)
  text = plan_lib.format_plan(plan, "v5e")
  assert (
    plan.platform == "cpu" and "(mesh dcn_data 1 x data 1 x fsdp 8 x tensor 1), remat none" in text
  )
  assert "fits v5e (16 GiB HBM per chip): YES" in text


@pytest.mark.slow
def test_plan_cli(tmp_path):
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "plan.py"),
      "--config=" + os.path.join(REPO, "configs", "tiny.py"),
      "--devices=4",
      "--accelerator=h100",
      "--config.mesh.data=1",
      "--config.mesh.fsdp=-1",
      "--config.model.num_layers=1",
      "--config.seq_len=16",
      "--config.batch_size=4",
    ],
    capture_output=True,
    text=True,
    env={**os.environ, "XLA_FLAGS": ""},
  )
  assert out.returncode == 0, out.stderr
  # It says what it is doing before the silent compile (stderr: stdout stays the plan).
  assert "Compiling the joint train step ahead of time for 4 fake CPU device(s)" in out.stderr
  assert "devices 4 x cpu (mesh dcn_data 1 x data 1 x fsdp 4 x tensor 1), remat none" in out.stdout
  assert "compiler: XLA:CPU (fake devices standing in for the chips: an estimate" in out.stdout
  assert "fits h100 (80 GiB HBM per chip): YES" in out.stdout


def test_plan_cli_explains_the_removed_preset():
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "plan.py"),
      "--config=" + os.path.join(REPO, "configs", "tiny.py"),
      "--devices=4",
      "--config.mesh.preset=fsdp",
    ],
    capture_output=True,
    text=True,
    env={**os.environ, "XLA_FLAGS": ""},
  )
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert "error: mesh.preset='fsdp' was removed" in out.stderr
  assert "fsdp is mesh.data=1 mesh.fsdp=-1" in out.stderr
