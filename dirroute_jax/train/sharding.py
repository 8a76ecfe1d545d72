"""Device mesh and logical-axis rules: one rules table per parallelism preset (as MaxText).

Every parameter and large activation carries logical axis names (see model/); a preset maps
them onto the mesh axes (data, fsdp, tensor). Shardings are derived from `jax.eval_shape`, so
nothing is allocated to decide where it goes.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dirroute_jax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both: fsdp is data parallel too

_ACTIVATIONS_DP = (
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", None),
    ("activation_head_dim", None),
    ("activation_mlp", None),
)

RULES: dict[str, tuple[tuple[str, object], ...]] = {
    # Parameters replicated; batch split over every device.
    "dp": _ACTIVATIONS_DP + (
        ("vocab", None), ("embed", None), ("heads", None), ("head_dim", None), ("mlp", None),
        ("norm", None), ("router_hidden", None), ("router_hidden_in", None),
        ("router_out", None), ("directions", None), ("head_dim_out", None),
    ),
    # ZeRO-3 style: parameters and optimizer state split along d_model over `fsdp`, gathered
    # per layer by XLA.
    "fsdp": _ACTIVATIONS_DP + (
        ("vocab", None), ("embed", "fsdp"), ("heads", None), ("head_dim", None),
        ("mlp", None), ("norm", None), ("router_hidden", None), ("router_hidden_in", None),
        ("router_out", None), ("directions", None), ("head_dim_out", None),
    ),
    # fsdp plus Megatron tensor parallelism over `tensor`: heads, MLP width and vocab split.
    "fsdp_tp": (
        ("activation_batch", BATCH_AXES),
        ("activation_length", None),
        ("activation_embed", None),
        ("activation_heads", "tensor"),
        ("activation_head_dim", None),
        ("activation_mlp", "tensor"),
        ("vocab", "tensor"), ("embed", "fsdp"), ("heads", "tensor"), ("head_dim", None),
        ("mlp", "tensor"), ("norm", None), ("router_hidden", None), ("router_hidden_in", None),
        ("router_out", None), ("directions", None), ("head_dim_out", None),
    ),
}


def rules_for(preset: str):
  if preset not in RULES:
    raise ConfigError(f"mesh.preset={preset!r} is unknown; use one of {sorted(RULES)}.")
  return RULES[preset]


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes; one of them may be -1 = all remaining devices."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError(f"at most one of mesh.data/fsdp/tensor may be -1, got {sizes}.")
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}.")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are not "
                        f"divisible by the fixed axes' product {known}.")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices "
                      f"but {num_devices} are available; set one mesh axis to -1.")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  try:
    device_grid = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # irregular CPU/test topologies: a plain reshape is as good
    device_grid = np.asarray(devices).reshape(shape)
  return Mesh(device_grid, MESH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(batch_size: int, grad_accum_steps: int, mesh: Mesh) -> None:
  dp = data_parallel_size(mesh)
  if batch_size % grad_accum_steps:
    raise ConfigError(f"batch_size={batch_size} is not divisible by "
                      f"grad_accum_steps={grad_accum_steps}.")
  micro = batch_size // grad_accum_steps
  if micro % dp:
    raise ConfigError(
        f"the micro-batch of {micro} sequences (batch_size={batch_size} / grad_accum_steps="
        f"{grad_accum_steps}) does not divide over the {dp} data-parallel devices "
        f"(mesh data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']}); use a batch_size "
        f"that is a multiple of {dp * grad_accum_steps}.")


def logical_shardings(abstract_boxed_tree, mesh: Mesh, rules):
  """NamedShardings for a tree of (possibly `nn.Partitioned`-boxed) abstract values.

  Leaves without logical names (optimizer counters, the step) are replicated.
  """
  specs = nn.get_partition_spec(abstract_boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def optimizer_shardings(abstract_opt_state, abstract_params, param_shardings, default):
  """Optimizer-state leaves shaped like a param (Adam's moments) get that param's sharding.

  A moment's key path ends in its param's path (e.g. `...mu['blocks_0']['attn']['out']
  ['kernel']`); everything else (counters, masked placeholders) gets `default`.
  """
  by_path = {}
  for (path, sh), shape in zip(
      jax.tree_util.tree_flatten_with_path(param_shardings)[0],
      jax.tree.leaves(abstract_params)):
    by_path[tuple(k.key for k in path)] = (sh, shape.shape)

  def pick(path, leaf):
    keys = []
    for k in reversed(path):
      if not isinstance(k, jax.tree_util.DictKey):
        break
      keys.append(k.key)
    sh, shape = by_path.get(tuple(reversed(keys)), (None, None))
    return sh if sh is not None and shape == leaf.shape else default

  return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)
