"""The TPU's fast path on a CPU: Pallas splash attention in interpret mode equals XLA's attention
(forward and gradients), compiles into the step for a compile-only TPU slice, and multi-slice
meshes split the batch, never the parameters, over the slow network."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dirroute_jax.config import ConfigError
from dirroute_jax.model import kernels
from dirroute_jax.model.transformer import build_model, forward, init_params
from dirroute_jax.train import plan as plan_lib
from dirroute_jax.train import sharding, step, targets

needs_tpu_compiler = pytest.mark.skipif(
  not targets.compiler_installed("tpu"), reason="libtpu not installed: pip install -e '.[tpu]'"
)


def _attend(impl, q, k, v, ct):
  def loss(q, k, v):
    o = kernels._fused(impl, q, k, v)
    return jnp.sum(o.astype(jnp.float32) * ct), o

  (_, o), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v)
  return np.asarray(o, np.float32), [np.asarray(g, np.float32) for g in grads]


@pytest.mark.parametrize(
  "shape,dtype,atol,grad_rtol",
  [
    ((2, 100, 4, 16), jnp.float32, 1e-5, 1e-5),  # T not a multiple of 128: padded, then dropped
    ((2, 128, 4, 16), jnp.bfloat16, 3e-2, 2e-2),
    pytest.param((1, 1024, 2, 128), jnp.float32, 1e-5, 1e-5, marks=pytest.mark.slow),  # 433m
  ],
  ids=["tiny-f32", "tiny-bf16", "433m-slice-f32"],
)
def test_splash_interpret_equals_xla(shape, dtype, atol, grad_rtol):
  q, k, v = (jax.random.normal(key, shape, dtype) for key in jax.random.split(jax.random.key(0), 3))
  ct = jax.random.normal(jax.random.key(1), shape, jnp.float32)
  out_x, grads_x = _attend("xla", q, k, v, ct)
  out_s, grads_s = _attend("splash", q, k, v, ct)
  np.testing.assert_allclose(out_s, out_x, atol=atol)
  for gs, gx in zip(grads_s, grads_x):
    scale = float(np.abs(gx).max())
    np.testing.assert_allclose(gs, gx, atol=grad_rtol * scale)


@pytest.mark.slow
def test_model_with_splash_equals_xla(tiny_cfg):
  tokens = jax.random.randint(jax.random.key(2), (2, 40), 0, tiny_cfg.model.vocab_size)
  logits = {}
  for impl in ("xla", "splash"):
    tiny_cfg.model.attention_impl = impl
    model = build_model(tiny_cfg.model)
    logits[impl], _ = forward(model, init_params(model, jax.random.key(0)), tokens)
  np.testing.assert_allclose(np.asarray(logits["splash"]), np.asarray(logits["xla"]), atol=2e-5)


class _Device:
  def __init__(self, platform, kind):
    self.platform, self.device_kind = platform, kind


def test_auto_picks_splash_on_tpu_only():
  impl, why = kernels.resolve_attention_impl("auto", "bfloat16", 128, _Device("tpu", "TPU v5 lite"))
  assert impl == "splash" and "TPU v5 lite" in why
  assert (
    kernels.resolve_attention_impl("splash", "float32", 16, _Device("cpu", "cpu"))[0] == "splash"
  )  # the Pallas interpreter: what the tests above run
  with pytest.raises(ConfigError, match="'splash' cannot run here: it is a TPU kernel"):
    kernels.resolve_attention_impl("splash", "bfloat16", 128, _Device("gpu", "NVIDIA H100"))


def test_mesh_shape_has_an_outer_slice_level(tiny_cfg):
  m = tiny_cfg.mesh
  m.data, m.fsdp = 1, -1
  assert sharding.mesh_shape(m, 32, num_slices=2) == (2, 1, 16, 1)  # dcn_data 0: the slices
  m.dcn_data = 2
  assert sharding.mesh_shape(m, 8) == (2, 1, 4, 1)  # also on one slice (tests, CPUs)
  m.dcn_data = 4
  with pytest.raises(ConfigError, match="use mesh.dcn_data=2 \\(the number of slices\\)"):
    sharding.mesh_shape(m, 32, num_slices=2)


def test_dcn_data_splits_the_batch_not_the_parameters(tiny_cfg):
  tiny_cfg.mesh.data, tiny_cfg.mesh.fsdp = 1, -1
  one = step.make_trainer(tiny_cfg, sharding.make_mesh(tiny_cfg.mesh, jax.devices()[:4]))
  tiny_cfg.mesh.dcn_data = 2
  two = step.make_trainer(tiny_cfg, sharding.make_mesh(tiny_cfg.mesh, jax.devices()[:8]))
  assert dict(two.mesh.shape) == {"dcn_data": 2, "data": 1, "fsdp": 4, "tensor": 1}
  # Each slice holds what one slice alone would: parameters are never split over dcn_data.
  assert plan_lib.bytes_per_device(two.abstract_state()) == plan_lib.bytes_per_device(
    one.abstract_state()
  )
  assert two.batch_sharding.spec == jax.sharding.PartitionSpec(("dcn_data", "data", "fsdp"))


@needs_tpu_compiler
@pytest.mark.slow
def test_tiny_pair_compiles_for_two_tpu_slices(tiny_cfg):
  tiny_cfg.model.dtype = "bfloat16"
  tiny_cfg.mesh.data, tiny_cfg.mesh.fsdp = 1, -1
  target = targets.get("2xv5e-4")
  devices = targets.devices(target)
  assert sorted({d.slice_index for d in devices}) == [0, 1]
  plan = plan_lib.make_plan(tiny_cfg, devices, target.hbm_bytes, target.name)
  assert plan.mesh == {"dcn_data": 2, "data": 1, "fsdp": 4, "tensor": 1}
  assert plan.micro_batch_per_device == tiny_cfg.batch_size // 8
  assert all("Pallas splash attention" in line for line in plan.kernels.values())
  assert plan.temp_bytes > 0 and plan_lib.fits(plan)[0]


def test_tpu_launcher_requests_a_multi_slice_queued_resource():
  from dirroute_jax.cloud import tpu

  job = tpu.TpuJob(
    name="dirroute-ms",
    zone="us-west4-a",
    accelerator_type="v5e-16",
    config="configs/433m.py",
    workdir="gs://bucket/run",
    num_slices=2,
    train_args=("--config.data.files=~/data/*.parquet",),
  )
  cmds = [c for _, c in tpu.plan(job)]
  create = cmds[0]
  assert create[3:6] == ["queued-resources", "create", "dirroute-ms"]
  assert "--node-count=2" in create and "--node-prefix=dirroute-ms" in create
  assert not any(a.startswith("--node-id") for a in create)
  ssh = [c for c in cmds if c[3:5] == ["queued-resources", "ssh"]]
  assert len(ssh) == 2 and all("--node=all" in c and "--worker=all" in c for c in ssh)
  assert any(c[3:5] == ["queued-resources", "scp"] and "--node=all" in c for c in cmds)
  train = next(a for a in ssh[1] if a.startswith("--command="))
  assert "--distributed=on" in train
  with pytest.raises(ValueError, match="--num_slices=0"):
    tpu.plan(
      tpu.TpuJob(
        name="x",
        zone="z",
        accelerator_type="v5e-16",
        config="configs/433m.py",
        workdir="gs://b/r",
        num_slices=0,
      )
    )
