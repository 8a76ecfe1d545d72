"""Compiling for pods with their own compilers, on this CPU: libtpu's compile-only TPU devices and
jax's CUDA plugin's compile-only H100s (train/targets.py, launch/plan.py --target).

The tiny pair compiles in seconds per target. Tests that need a compiler skip cleanly where it
is not installed (`pip install -e '.[tpu]'`, `pip install -e '.[cuda]'`); CI installs both.
"""

import os
import subprocess
import sys

import pytest

from dirroute_jax.train import plan as plan_lib
from dirroute_jax.train import targets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

needs_tpu_compiler = pytest.mark.skipif(
  not targets.compiler_installed("tpu"), reason="libtpu not installed: pip install -e '.[tpu]'"
)
needs_gpu_compiler = pytest.mark.skipif(
  not targets.compiler_installed("gpu"),
  reason="jax's CUDA plugin not installed: pip install -e '.[cuda]'",
)


def _plan(cfg, name):
  target = targets.get(name)
  return plan_lib.make_plan(cfg, targets.devices(target), target.hbm_bytes, target.name)


def _check_memory(plan, cfg, padded=False):
  # The compiler's own analysis: the arguments are this device's state plus its rows of the
  # batch (3 arrays of [B/dp, T] x 4 bytes), the state is donated, temporaries exist. The TPU
  # lays small arrays out in padded tiles (8 x 128), so there the tiny state takes more room.
  dp = plan.mesh["data"] * plan.mesh["fsdp"]
  batch = 3 * cfg.batch_size // dp * cfg.seq_len * 4
  if padded:
    assert plan.argument_bytes >= plan.state_bytes + batch
    assert plan.state_bytes <= plan.alias_bytes <= plan.argument_bytes - batch
  else:
    assert plan.argument_bytes == pytest.approx(plan.state_bytes + batch, rel=0.02)
    assert plan.alias_bytes == pytest.approx(plan.state_bytes, rel=0.02)
  assert 0 < plan.temp_bytes and plan.state_bytes < plan.peak_bytes < plan.hbm_bytes
  assert plan_lib.fits(plan) == (True, plan.hbm_bytes)


def test_target_names():
  assert targets.get("v5e-16").chips == 16 and targets.get("v5e-16").hbm_bytes == 16 * 1024**3
  assert targets.get("v4-8").chip_config == "megacore" and targets.get("v4-8").chips == 4
  two = targets.get("2xv5e-16")
  assert (two.chips, two.num_slices, two.topology) == (32, 2, "v5e:4x4")
  assert targets.get("8xH100").topology == "1x1x8"
  for bad in ("v9-8", "3xh100", "8xh100x", ""):
    with pytest.raises(targets.UnknownTarget, match="known targets: v4-8, "):
      targets.get(bad)


def test_gpu_description_is_the_chip():
  text = targets.gpu_target_config("h100")
  assert "core_count: 132" in text and "cuda_compute_capability { major: 9 minor: 0 }" in text
  assert 'device_description_str: "NVIDIA H100 80GB HBM3"' in text


def test_missing_compiler_says_how_to_install(monkeypatch):
  monkeypatch.setattr(targets, "compiler_installed", lambda platform: False)
  with pytest.raises(targets.CompilerMissing, match=r"pip install -e '\.\[tpu\]'"):
    targets.devices(targets.get("v5e-16"))
  with pytest.raises(targets.CompilerMissing, match=r"pip install -e '\.\[cuda\]'"):
    targets.devices(targets.get("8xh100"))


@needs_tpu_compiler
@pytest.mark.parametrize("pooling", ["sequence_mean", "causal_mean"])
def test_tiny_pair_compiles_for_a_tpu_slice(tiny_cfg, pooling):
  tiny_cfg.model.pooling = pooling
  tiny_cfg.model.dtype = "bfloat16"
  tiny_cfg.mesh.data, tiny_cfg.mesh.fsdp = 1, -1  # 433m's layout: parameters split 4 ways
  plan = _plan(tiny_cfg, "v5e-4")
  assert plan.platform == "tpu" and plan.device_kind == "TPU v5 lite"
  assert plan.compiler.startswith("TPU compiler (libtpu ")
  assert plan.mesh == {"dcn_data": 1, "data": 1, "fsdp": 4, "tensor": 1}
  # On a TPU `auto` runs the Pallas splash kernel, compiled by Mosaic into the step.
  assert all("Attention: Pallas splash attention" in line for line in plan.kernels.values())
  _check_memory(plan, tiny_cfg, padded=True)
  assert plan.xla_flops > 0  # the TPU compiler gives a FLOP count (not the model FLOPs)
  text = plan_lib.format_plan(plan)
  assert "fits v5e-4 (16 GiB HBM per chip): YES" in text and "headroom" in text


@needs_gpu_compiler
@pytest.mark.parametrize(
  "mesh",
  [
    dict(data=1, fsdp=-1),
    pytest.param(dict(data=-1), marks=pytest.mark.slow),
    pytest.param(dict(data=-1, tensor=2), marks=pytest.mark.slow),
  ],
  ids=["fsdp", "data", "tensor2"],
)
def test_tiny_pair_compiles_with_cudnn_for_8_h100s(tiny_cfg, mesh):
  """The 8-GPU failure: on the fsdp mesh cuDNN's partitioner got q split over the batch and k, v
  replicated ("Query, key and value should have same sharding") and the compile failed. The
  kernel now runs per device under shard_map, on the mesh's logical layout."""
  tiny_cfg.model.dtype = "bfloat16"  # cuDNN flash attention needs bf16; head_dim 16 is fine
  for axis, size in mesh.items():
    tiny_cfg.mesh[axis] = size
  if mesh.get("data") == -1 and "fsdp" not in mesh:
    tiny_cfg.mesh.fsdp = 1
  plan = _plan(tiny_cfg, "8xh100")
  assert plan.platform == "gpu" and plan.device_kind == "NVIDIA H100 80GB HBM3"
  assert plan.compiler.startswith("XLA:GPU (jax-cuda12-plugin ")
  assert all("Attention: cuDNN flash attention" in line for line in plan.kernels.values())
  _check_memory(plan, tiny_cfg)
  assert plan.xla_flops == 0  # the CUDA plugin's cost analysis gives none: said, not invented
  assert "compiler cost_analysis: none given by this compiler" in plan_lib.format_plan(plan)


@needs_gpu_compiler
def test_float32_on_h100_keeps_xla_attention(tiny_cfg):
  plan = _plan(tiny_cfg, "1xh100")
  assert all("Attention: XLA" in line and "bf16" in line for line in plan.kernels.values())


def _plan_cli(*args):
  return subprocess.run(
    [sys.executable, os.path.join(REPO, "launch", "plan.py"), *args],
    capture_output=True,
    text=True,
    env={**os.environ, "XLA_FLAGS": ""},
  )


def test_unknown_target_is_one_line():
  out = _plan_cli("--config=" + os.path.join(REPO, "configs", "tiny.py"), "--target=v9-8")
  assert out.returncode != 0 and "Traceback" not in out.stderr
  assert (
    out.stderr.strip()
    .splitlines()[-1]
    .startswith("error: unknown target 'v9-8'; known targets: v4-8, ")
  )


@needs_tpu_compiler
@pytest.mark.slow
def test_plan_cli_target_uses_the_tpu_compiler():
  out = _plan_cli(
    "--config=" + os.path.join(REPO, "configs", "tiny.py"),
    "--target=v5e-4",
    "--config.model.num_layers=1",
    "--config.seq_len=16",
    "--config.batch_size=4",
  )
  assert out.returncode == 0, out.stderr
  assert "Compiling the joint train step ahead of time for v5e-4 (4 x TPU v5 lite)" in out.stderr
  assert "compiler: TPU compiler (libtpu " in out.stdout
  assert "fits v5e-4 (16 GiB HBM per chip): YES" in out.stdout
