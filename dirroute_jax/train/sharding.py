"""Device mesh and the logical-axis rules: one table, and the mesh sizes decide what is split.

Every parameter and large activation carries logical axis names (see model/);
`LOGICAL_AXIS_RULES` maps each name onto mesh axes (dcn_data, data, fsdp, tensor), as MaxText
does. A mesh axis of size 1 splits nothing, so the sizes (config `mesh.*`) alone choose the
parallelism:

  mesh.data=-1                          data parallel: parameters replicated, batch split
  mesh.data=1 mesh.fsdp=-1              ZeRO-3/FSDP: parameters and optimizer state split
                                        along d_model (gathered per layer by XLA), batch split
  mesh.data=1 mesh.fsdp=2 mesh.tensor=-1  and Megatron tensor parallelism: heads, MLP width
                                        and vocabulary split over `tensor`
  mesh.dcn_data=2 (+ any of the above)  two TPU slices joined over the data-center network:
                                        the batch is split over slices too, parameters never
                                        (each slice holds its own copy; only the gradient
                                        all-reduce crosses the slow network)

`mesh.dcn_data` is the outer level of a two-level mesh (MaxText's `dcn_data_parallelism`):
when the devices span several slices (`device.slice_index`), the mesh is built by
`mesh_utils.create_hybrid_device_mesh` so that every other axis stays inside a slice; it
defaults to the number of slices.

Shardings are derived from `jax.eval_shape`, so nothing is allocated to decide where it goes.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dirroute_jax.config import ConfigError, validate_mesh_config

MESH_AXES = ("dcn_data", "data", "fsdp", "tensor")
ICI_AXES = MESH_AXES[1:]  # inside one slice
# The batch is split over all three: fsdp is data parallel too, and so are the slices.
BATCH_AXES = ("dcn_data", "data", "fsdp")

LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("activation_batch", BATCH_AXES),
  ("activation_length", None),
  ("activation_embed", None),
  ("activation_heads", "tensor"),
  ("activation_head_dim", None),
  ("activation_mlp", "tensor"),
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("head_dim", None),
  ("mlp", "tensor"),
  # Never split: small (norm scales, the router's layers, the directions' K and Dh axes).
  ("norm", None),
  ("router_hidden", None),
  ("router_hidden_in", None),
  ("router_out", None),
  ("directions", None),
  ("head_dim_out", None),
)

_DIMENSIONS = {  # logical axis -> (what it is, how else to fix it)
  "vocab": ("padded vocabulary", "or set model.vocab_pad_multiple to a multiple of {ways}"),
  "embed": ("d_model", "or change model.d_model"),
  "heads": ("num_heads", "or change model.num_heads"),
  "mlp": (
    "MLP width d_ff",
    "or change model.d_ff (from which the 'matched' model derives its own)",
  ),
}


def _num_slices(devices) -> int:
  return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def mesh_shape(mesh_cfg, num_devices: int, num_slices: int = 1) -> tuple[int, int, int, int]:
  """(dcn_data, data, fsdp, tensor) sizes; one of data/fsdp/tensor may be -1 = all remaining
  devices of a slice. `mesh.dcn_data` (default: `num_slices`) must equal the slices there are
  when the devices span several."""
  dcn = int(mesh_cfg.get("dcn_data", None) or num_slices)
  sizes = [int(mesh_cfg[a]) for a in ICI_AXES]
  if dcn < 1 or (num_slices > 1 and dcn != num_slices) or num_devices % dcn:
    raise ConfigError(
      f"mesh.dcn_data={dcn} does not fit {num_devices} devices in {num_slices} "
      f"slice(s); use mesh.dcn_data={num_slices} (the number of slices)."
    )
  per_slice = num_devices // dcn
  if sizes.count(-1) > 1:
    raise ConfigError(
      f"at most one of mesh.data/fsdp/tensor may be -1, got "
      f"{dict(zip(ICI_AXES, sizes))} (mesh.data defaults to -1: to give all "
      "devices to another axis, set mesh.data=1 too)."
    )
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"mesh sizes must be positive or -1, got {dict(zip(ICI_AXES, sizes))}.")
  known = math.prod(s for s in sizes if s != -1)
  where = f"{per_slice} devices per slice" if dcn > 1 else f"{num_devices} devices"
  if -1 in sizes:
    if per_slice % known:
      raise ConfigError(
        f"mesh {dict(zip(ICI_AXES, sizes))}: {where} are not divisible by the "
        f"fixed axes' product {known}."
      )
    sizes[sizes.index(-1)] = per_slice // known
  if math.prod(sizes) != per_slice:
    raise ConfigError(
      f"mesh {dict(zip(ICI_AXES, sizes))} needs {math.prod(sizes)} devices "
      f"but {where} are available; set one mesh axis to -1."
    )
  return (dcn, *sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  """The (dcn_data, data, fsdp, tensor) mesh over `devices` (default: all), laid out for the
  topology: inside a slice by `jax.make_mesh`, across slices by the hybrid-mesh helper.

  The axes are Auto (XLA propagates shardings from those we pin: state, batch, the logical
  constraints); `jax.make_mesh` would otherwise make them Explicit.
  """
  validate_mesh_config(mesh_cfg)
  devices = jax.devices() if devices is None else list(devices)
  slices = _num_slices(devices)
  shape = mesh_shape(mesh_cfg, len(devices), slices)
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if slices > 1:  # jax.make_mesh rejects devices of several slices
    from jax.experimental import mesh_utils

    grid = mesh_utils.create_hybrid_device_mesh(
      (1, *shape[1:]), (shape[0], 1, 1, 1), devices, allow_split_physical_axes=True
    )
    return Mesh(grid, MESH_AXES, axis_types=axis_types)
  return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(batch_size: int, grad_accum_steps: int, mesh: Mesh) -> None:
  dp = data_parallel_size(mesh)
  if batch_size % grad_accum_steps:
    raise ConfigError(
      f"batch_size={batch_size} is not divisible by grad_accum_steps={grad_accum_steps}."
    )
  micro = batch_size // grad_accum_steps
  if micro % dp:
    raise ConfigError(
      f"the micro-batch of {micro} sequences (batch_size={batch_size} / grad_accum_steps="
      f"{grad_accum_steps}) does not divide over the {dp} data-parallel devices "
      f"(mesh dcn_data x data x fsdp = {mesh.shape['dcn_data']} x {mesh.shape['data']} x "
      f"{mesh.shape['fsdp']}); use a batch_size "
      f"that is a multiple of {dp * grad_accum_steps}."
    )


def check_divisible(abstract_boxed_params, mesh: Mesh, model: str) -> None:
  """A ConfigError, before anything compiles, for a parameter dimension that its mesh axes do
  not divide (jax would raise an IndivisibleError from inside the first jitted call)."""
  is_box = lambda x: isinstance(x, nn.Partitioned)
  leaves = jax.tree_util.tree_flatten_with_path(abstract_boxed_params, is_leaf=is_box)[0]
  for path, leaf in leaves:
    if not is_box(leaf):
      continue
    mesh_axes = nn.logical_to_mesh_axes(leaf.names, LOGICAL_AXIS_RULES)
    for size, logical, axes in zip(leaf.value.shape, leaf.names, mesh_axes):
      axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      ways = math.prod(mesh.shape[a] for a in axes)
      if size % ways:
        what, hint = _DIMENSIONS.get(logical, (f"{logical!r} dimension", ""))
        split = " x ".join(f"mesh.{a}={mesh.shape[a]}" for a in axes)
        biggest = max(axes, key=lambda a: mesh.shape[a])
        raise ConfigError(
          f"the {model!r} model's {what} of {size} does not divide over {split} (parameter "
          f"{jax.tree_util.keystr(path, simple=True, separator='/')}); use mesh sizes that "
          f"divide {size} (e.g. mesh.{biggest}=1){', ' if hint else ''}"
          f"{hint.format(ways=ways)}."
        )


def logical_shardings(abstract_boxed_tree, mesh: Mesh):
  """NamedShardings for a tree of (possibly `nn.Partitioned`-boxed) abstract values.

  Leaves without logical names (optimizer counters, the step) are replicated.
  """
  specs = nn.get_partition_spec(abstract_boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


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
    jax.tree_util.tree_flatten_with_path(param_shardings)[0], jax.tree.leaves(abstract_params)
  ):
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
