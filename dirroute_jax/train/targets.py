"""Named accelerator targets and their compile-only devices: a pod's own compiler, no pod.

Both accelerator compilers run on a CPU-only machine without allocating anything:

  - TPU: libtpu (`pip install -e '.[tpu]'`) describes a slice's topology
    (`jax.experimental.topologies.get_topology_desc(platform="tpu", topology_name="v5e:4x4")`)
    and returns compile-only TPU devices; executables compiled for them carry the TPU
    compiler's own memory analysis.
  - NVIDIA GPU: jax's CUDA plugin (`pip install -e '.[cuda]'`; no GPU or driver needed to
    compile) takes a GPU description (a `GpuTargetConfigProto` in text form, written below from
    the chip's published properties) and a "hosts x processes x GPUs" topology.

A target name is what a user rents: `v5e-16` (16 chips), `8xh100`, and for several TPU slices
joined over the data-center network `2xv5e-16` (issue: multi-slice meshes). `devices(target)`
returns the compile-only devices, or raises `CompilerMissing` saying how to install the
compiler (the plan then falls back to fake CPU devices and says so).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re

GIB = 1024**3


class UnknownTarget(ValueError):
  pass


class CompilerMissing(RuntimeError):
  pass


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  platform: str  # "tpu" | "gpu"
  chips: int  # chips (GPUs) in all, every slice included
  hbm_bytes: int  # per chip
  chip: str  # what the compiler reports as device_kind, for the output
  topology: str  # libtpu topology name, or the CUDA "hosts x processes x GPUs" string
  chip_config: str | None = None  # libtpu chip configuration ("megacore" on v4)
  gpu: str | None = None  # key of GPU_SPECS
  num_slices: int = 1


# TPU slices. A slice name counts TensorCores for v4/v5p ("v4-8" = 4 megacore chips) and chips
# for v5e/v6e ("v5e-16" = 16 chips), as Cloud TPU's accelerator types do.
_TPU = {
  "v4-8": ("v4:2x2x1", 4, 32 * GIB, "TPU v4", "megacore"),
  "v4-32": ("v4:2x2x4", 16, 32 * GIB, "TPU v4", "megacore"),
  "v5e-4": ("v5e:2x2", 4, 16 * GIB, "TPU v5 lite", None),
  "v5e-16": ("v5e:4x4", 16, 16 * GIB, "TPU v5 lite", None),
  "v5e-256": ("v5e:16x16", 256, 16 * GIB, "TPU v5 lite", None),
  "v5p-8": ("v5:2x2x1", 4, 95 * GIB, "TPU v5", "megacore"),
  "v6e-8": ("v6e:2x4", 8, 32 * GIB, "TPU v6 lite", None),
  "v6e-16": ("v6e:4x4", 16, 32 * GIB, "TPU v6 lite", None),
}

# NVIDIA GPUs: the properties XLA's GPU compiler reads (SM count, shared memory, caches,
# clocks, memory, compute capability), from NVIDIA's published specifications. Only fields
# that every jax CUDA plugin in this project's range parses.
GPU_SPECS = {
  "h100": dict(
    name="NVIDIA H100 80GB HBM3",
    cc=(9, 0),
    core_count=132,
    fpus_per_core=128,
    shared_memory_per_core=233472,
    shared_memory_per_block_optin=232448,
    memory_bandwidth=3352320000000,
    l2_cache_size=52428800,
    clock_rate_ghz=1.98,
    device_memory_size=84942979072,
  ),
  "h200": dict(
    name="NVIDIA H200",
    cc=(9, 0),
    core_count=132,
    fpus_per_core=128,
    shared_memory_per_core=233472,
    shared_memory_per_block_optin=232448,
    memory_bandwidth=4800000000000,
    l2_cache_size=52428800,
    clock_rate_ghz=1.98,
    device_memory_size=150754820096,
  ),
  "a100": dict(
    name="NVIDIA A100-SXM4-80GB",
    cc=(8, 0),
    core_count=108,
    fpus_per_core=64,
    shared_memory_per_core=167936,
    shared_memory_per_block_optin=166912,
    memory_bandwidth=2039040000000,
    l2_cache_size=41943040,
    clock_rate_ghz=1.41,
    device_memory_size=85100068864,
  ),
}
_GPU_COUNTS = (1, 8, 16)  # one GPU, one 8-GPU node, two nodes

_MULTI_SLICE = re.compile(r"^(\d+)x(v\w+-\d+)$")


def _targets() -> dict[str, Target]:
  out = {}
  for name, (topology, chips, hbm, chip, chip_config) in _TPU.items():
    out[name] = Target(name, "tpu", chips, hbm, chip, topology, chip_config)
  for gpu, spec in GPU_SPECS.items():
    for n in _GPU_COUNTS:
      hosts, per_host = (n // 8, 8) if n > 8 else (1, n)
      out[f"{n}x{gpu}"] = Target(
        f"{n}x{gpu}",
        "gpu",
        n,
        spec["device_memory_size"],
        spec["name"],
        f"{hosts}x1x{per_host}",
        gpu=gpu,
      )
  return out


TARGETS = _targets()


def known_names() -> list[str]:
  return list(TARGETS) + [f"2x{n}" for n in _TPU if not n.endswith("-256")]


def get(name: str) -> Target:
  """The Target called `name` ("v5e-16", "8xh100", "2xv5e-16" for two slices)."""
  key = name.strip().lower()
  if key in TARGETS:
    return TARGETS[key]
  m = _MULTI_SLICE.match(key)
  if m and m.group(2) in _TPU and int(m.group(1)) >= 1:
    one = TARGETS[m.group(2)]
    slices = int(m.group(1))
    return dataclasses.replace(one, name=key, chips=one.chips * slices, num_slices=slices)
  raise UnknownTarget(
    f"unknown target {name!r}; known targets: {', '.join(known_names())} "
    "(NxSLICE for N TPU slices, e.g. 2xv5e-16)."
  )


def gpu_target_config(gpu: str) -> str:
  """The GpuTargetConfigProto text that the CUDA plugin compiles against."""
  s = GPU_SPECS[gpu]
  major, minor = s["cc"]
  fields = dict(
    threads_per_block_limit=1024,
    threads_per_warp=32,
    shared_memory_per_block=49152,
    shared_memory_per_core=s["shared_memory_per_core"],
    threads_per_core_limit=2048,
    core_count=s["core_count"],
    fpus_per_core=s["fpus_per_core"],
    block_dim_limit_x=2147483647,
    block_dim_limit_y=65535,
    block_dim_limit_z=65535,
    memory_bandwidth=s["memory_bandwidth"],
    l2_cache_size=s["l2_cache_size"],
    clock_rate_ghz=s["clock_rate_ghz"],
    device_memory_size=s["device_memory_size"],
    shared_memory_per_block_optin=s["shared_memory_per_block_optin"],
    registers_per_core_limit=65536,
    registers_per_block_limit=65536,
  )
  body = "\n".join(f"  {k}: {v}" for k, v in fields.items())
  return (
    f"gpu_device_info {{\n{body}\n"
    f"  cuda_compute_capability {{ major: {major} minor: {minor} }}\n}}\n"
    'platform_name: "CUDA"\n'
    "dnn_version_info { major: 9 minor: 8 patch: 0 }\n"
    f'device_description_str: "{s["name"]}"\n'
  )


def compiler_installed(platform: str) -> bool:
  if platform == "tpu":
    return importlib.util.find_spec("libtpu") is not None
  return (
    importlib.util.find_spec("jax_plugins") is not None
    and importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  )


def install_hint(platform: str) -> str:
  return {
    "tpu": "pip install -e '.[tpu]' (libtpu: the TPU compiler, ~100 MB)",
    "gpu": "pip install -e '.[cuda]' (jax's CUDA 12 plugin with CUDA and cuDNN, ~5 GB; "
    "no GPU needed to compile)",
  }[platform]


def devices(target: Target) -> list:
  """Compile-only devices of `target`, from that target's own compiler.

  Needs `jax_platforms` to exclude the accelerator (e.g. "cpu") on a machine without one, so
  that jax does not try to open a TPU or GPU that is not there.
  """
  from jax.experimental import topologies  # imported late: jax's platform must be set first

  if not compiler_installed(target.platform):
    raise CompilerMissing(
      f"the {target.platform.upper()} compiler is not installed; {install_hint(target.platform)}"
    )
  if target.platform == "tpu":
    # Compile-only: no chip is opened, so libtpu's one-process-per-host lock (a file in /tmp)
    # would only stop a second planner or a test beside this one; and no TPU VM metadata
    # server is there to ask.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    kwargs = {"chip_config_name": target.chip_config} if target.chip_config else {}
    topo = topologies.get_topology_desc(
      platform="tpu", topology_name=target.topology, num_slices=target.num_slices, **kwargs
    )
  else:
    topo = topologies.get_topology_desc(
      platform="cuda", target_config=gpu_target_config(target.gpu), topology=target.topology
    )
  devs = list(topo.devices)
  if len(devs) != target.chips:
    raise RuntimeError(
      f"{target.name}: the compiler described {len(devs)} devices, expected {target.chips}"
    )
  return devs
