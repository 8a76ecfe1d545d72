"""The causal attention op, apart from the layer: which kernel runs it, and how it is sharded.

`Attention` (model/attention.py) computes q, k, v and hands them to `causal_attention`; the
routing hook acts on its output. The kernel is chosen from the request (`model.attention_impl`)
and the devices the step is compiled for: the trainer resolves "auto" once, against its mesh's
devices, before anything is traced (`with_kernel`), so a plan compiled on a CPU for eight
compile-only H100s picks what the run on the H100s will pick. A forward outside a trainer
(analysis, sampling) resolves against the default device.

Fused kernels are called per device under `jax.shard_map`: XLA's sharding propagation may give
q, k and v different shardings (it gave q the batch split and k, v none on an 8-GPU fsdp mesh,
and cuDNN's partitioner then refuses: "Query, key and value should have same sharding"), and a
kernel that sees only its shard needs no partitioner at all. The shard layout is the logical
activation axes' (batch over data x fsdp, heads over tensor), the one the layer constrains
q, k, v to anyway.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dirroute_jax.config import ConfigError

Array = jax.Array

KERNELS = ("xla", "cudnn", "splash")
NAMES = {
  "xla": "XLA (unfused softmax)",
  "cudnn": "cuDNN flash attention",
  "splash": "Pallas splash attention",
}
# Splash attention's tiles along the sequence (query and key blocks, forward and backward):
# the largest of these that divides the (padded) length. At 433m (T = 1024, Dh = 128, bf16) 512
# gives 2 x 2 blocks per head: a 512 x 512 float32 score tile (1 MiB) plus the q, k, v, o tiles
# (128 KiB each) sit well inside the smallest VMEM of v4/v5e/v5p/v6e, with 4x fewer grid steps
# (and per-step overheads) than jax's default of 128, as MaxText's defaults do.
SPLASH_BLOCKS = (512, 256, 128)
ACTIVATION_AXES = (
  "activation_batch",
  "activation_length",
  "activation_heads",
  "activation_head_dim",
)


def _is_nvidia(device) -> bool:
  if device.platform != "gpu":
    return False
  # A real CUDA client says "cuda ...", a ROCm one "rocm ..."; a compile-only one says "PJRT C
  # API": then ask the chip.
  version = str(getattr(device.client, "platform_version", "")).lower()
  if "cuda" in version or "rocm" in version:
    return "cuda" in version
  return device.device_kind.upper().startswith("NVIDIA")


def resolve_attention_impl(
  requested: str, dtype, head_dim: int, device: jax.Device | None = None
) -> tuple[str, str]:
  """The kernel the fused attention path runs, "xla", "cudnn" or "splash", and why.

  `jax.nn.dot_product_attention(implementation=None)` is XLA's unfused softmax(QK^T)V on every
  platform (it materialises B x H x T x T scores); the flash kernels must be asked for. "auto"
  asks for Pallas splash attention on a TPU, and for cuDNN's flash attention where cuDNN
  accepts the call: an NVIDIA GPU of compute capability >= 8.0, bf16 compute, head_dim a
  multiple of 8 and <= 128 (256 on Hopper and later); the mask is always plain causal here.
  Elsewhere (CPU, other GPUs, float32 on GPU) XLA's path. A kernel named where it cannot run is
  a ConfigError rather than an error from inside the kernel. `device` defaults to
  `jax.devices()[0]`.
  """
  if requested == "xla":
    return "xla", "model.attention_impl=xla"
  device = device or jax.devices()[0]
  if requested == "splash" or (requested == "auto" and device.platform == "tpu"):
    return _resolve_splash(requested, device)
  problems = []
  if not _is_nvidia(device):
    kind = "" if device.device_kind == device.platform else f" ({device.device_kind})"
    problems.append(f"cuDNN needs an NVIDIA GPU; the devices are {device.platform}{kind}")
  else:
    capability = tuple(int(v) for v in str(device.compute_capability).split("."))
    max_dh = 256 if capability >= (9, 0) else 128
    if capability < (8, 0):
      problems.append(
        f"cuDNN flash attention needs compute capability >= 8.0, "
        f"{device.device_kind} has {device.compute_capability}"
      )
    if head_dim % 8 or head_dim > max_dh:
      problems.append(f"cuDNN needs head_dim a multiple of 8 and <= {max_dh}, got {head_dim}")
  if jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
    problems.append(
      f"cuDNN needs bf16/fp16 compute (model.dtype=bfloat16), the model runs "
      f"{jnp.dtype(dtype).name}"
    )
  if requested == "cudnn" and problems:
    raise ConfigError(
      f"model.attention_impl='cudnn' cannot run here: {'; '.join(problems)}. "
      "Use model.attention_impl=auto (cuDNN where possible) or xla."
    )
  if problems:
    return "xla", f"auto: {problems[0]}"
  return "cudnn", (
    f"model.attention_impl={requested}: {device.device_kind}, "
    f"{jnp.dtype(dtype).name}, head_dim {head_dim}"
  )


def _resolve_splash(requested: str, device) -> tuple[str, str]:
  """Splash attention is a Pallas TPU kernel: compiled by Mosaic on a TPU, run by the Pallas
  interpreter on a CPU (slow: for tests), and not available on GPUs."""
  if device.platform == "tpu":
    return "splash", (
      f"model.attention_impl={requested}: {device.device_kind}, sequence blocks "
      f"of up to {SPLASH_BLOCKS[0]}"
    )
  if device.platform == "cpu" and requested == "splash":
    return "splash", "model.attention_impl=splash: Pallas interpreter on CPU (slow; for tests)"
  raise ConfigError(
    f"model.attention_impl='splash' cannot run here: it is a TPU kernel (run by "
    f"the Pallas interpreter on CPU), the devices are {device.platform} "
    f"({device.device_kind}). Use model.attention_impl=auto."
  )


def attention_impl_summary(model_cfg, device: jax.Device | None = None) -> str:
  """One line for the run's log: which attention kernel training uses and why."""
  impl, why = resolve_attention_impl(
    model_cfg.attention_impl, model_cfg.dtype, model_cfg.head_dim, device
  )
  return f"Attention: {NAMES[impl]} ({why})"


def with_kernel(model_cfg, device: jax.Device):
  """A copy of `model_cfg` whose `attention_impl` is the kernel resolved for `device`.

  Trainers call this with their mesh's first device before tracing: inside a trace only an
  abstract description of the devices exists (no compute capability to check)."""
  impl, _ = resolve_attention_impl(
    model_cfg.attention_impl, model_cfg.dtype, model_cfg.head_dim, device
  )
  resolved = model_cfg.copy_and_resolve_references()
  with resolved.unlocked():
    resolved.attention_impl = impl
  return resolved


def kernel_in_trace(requested: str, dtype, head_dim: int) -> str:
  """The kernel a layer runs, decided while tracing.

  Under a mesh of another platform than this process's default device (a plan compiled on a
  CPU for compile-only accelerators), a concrete request was resolved by the trainer for those
  devices (`with_kernel`) and is taken as it is; otherwise it is resolved (and checked) against
  the default device."""
  if requested != "auto" and _trace_platform() != jax.devices()[0].platform:
    return requested
  return resolve_attention_impl(requested, dtype, head_dim)[0]


def _activation_spec() -> P | None:
  """The PartitionSpec of B x T x H x Dh activations under the current logical rules and mesh,
  or None outside a multi-device mesh (nothing to shard)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or not nn.get_logical_axis_rules():
    return None
  return nn.logical_to_mesh_axes(ACTIVATION_AXES)


def _trace_platform() -> str:
  mesh = jax.sharding.get_abstract_mesh()
  device = getattr(mesh, "abstract_device", None) if not mesh.empty else None
  return device.platform if device is not None else jax.devices()[0].platform


def splash_attention(q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh, interpret: bool | None = None):
  """Causal softmax attention by the Pallas splash kernel (jax.experimental.pallas.ops.tpu).

  The kernel takes one sequence's H x T x Dh (vmapped over the batch), does not scale q (done
  here, in float32), and needs T to be a multiple of its blocks: T is padded to a multiple of
  128 with zero keys and queries that the causal mask keeps out of every real row (a padded
  key sits after every real query), and the padded rows are dropped."""
  from jax.experimental.pallas.ops.tpu import splash_attention as splash

  if interpret is None:
    interpret = _trace_platform() != "tpu"
  B, T, H, Dh = q_BxTxHxDh.shape
  Tp = -(-T // 128) * 128
  block = next(b for b in SPLASH_BLOCKS if Tp % b == 0)
  scale = jnp.asarray(Dh**-0.5, jnp.float32)
  q_BxTxHxDh = (q_BxTxHxDh.astype(jnp.float32) * scale).astype(q_BxTxHxDh.dtype)
  pad = lambda x: jnp.pad(x, ((0, 0), (0, Tp - T), (0, 0), (0, 0))).swapaxes(1, 2)
  mask = splash.MultiHeadMask(masks=(splash.CausalMask(shape=(Tp, Tp)),) * H)
  sizes = splash.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  kernel = splash.make_splash_mha(
    mask=mask, head_shards=1, q_seq_shards=1, block_sizes=sizes, interpret=interpret
  )
  o_BxHxTxDh = jax.vmap(kernel)(pad(q_BxTxHxDh), pad(k_BxTxHxDh), pad(v_BxTxHxDh))
  return o_BxHxTxDh.swapaxes(1, 2)[:, :T].astype(v_BxTxHxDh.dtype)


def _fused(impl: str, q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh):
  if impl == "splash":
    return splash_attention(q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh)
  return jax.nn.dot_product_attention(
    q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh, is_causal=True, implementation=impl
  )


def causal_attention(q_BxTxHxDh: Array, k_BxTxHxDh: Array, v_BxTxHxDh: Array, impl: str) -> Array:
  """softmax(q k^T / sqrt(Dh), causal) v per head, by kernel `impl` (see `resolve_attention_impl`).

  Returns z_BxTxHxDh, the per-head outputs before W_O."""
  spec = _activation_spec()
  if impl == "xla" or spec is None:  # plain XLA ops: the partitioner handles any sharding
    return _fused(impl, q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh)
  # Each device attends within its own sequences and heads: no communication is needed.
  return jax.shard_map(
    lambda q, k, v: _fused(impl, q, k, v),
    in_specs=(spec, spec, spec),
    out_specs=spec,
    check_vma=False,
  )(q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh)
