"""Memory and compute plan of the joint train step, compiled ahead of time: does the run fit the
accelerator before one is rented?

The real step (`make_trainer(cfg, mesh).train_step`) is lowered with abstract inputs
(ShapeDtypeStructs carrying the target shardings: nothing is allocated) and compiled for the
devices given. Which compiler's numbers they are depends on those devices:

  - compile-only TPU or NVIDIA GPU devices (`train/targets.py`: libtpu's topologies, jax's
    CUDA plugin): the target's OWN compiler, so `memory_analysis()` is that compiler's buffer
    assignment for the chip, the attention kernel is the one the run will use (cuDNN on NVIDIA
    GPUs), and only the allocator's fragmentation at run time is missing;
  - fake CPU devices (the fallback when the target's compiler is not installed): XLA:CPU's
    fusion, scheduling and buffer assignment, which behave unlike an accelerator's (on 433m its
    temporaries shrink little with the micro-batch and model.remat=full RAISES them). A screen
    only, and labelled so.

Two sources of numbers, either way:
  - the state shardings, exactly: params and optimizer bytes per device are each leaf's shard
    shape (`sharding.shard_shape`) times its dtype size, the biggest shard on any device;
  - the compiler's analyses of the compiled per-device program: `memory_analysis()`
    (arguments, outputs, aliased = donated, temporaries = activations, gradients, gathered
    weights; code) and `cost_analysis()` (FLOPs; the CUDA plugin gives none, and the TPU
    compiler's count of the pair step is not the model FLOPs: both are printed).

XLA counts a `while` loop's body once, so the gradient-accumulation scan's FLOPs are scaled by
`grad_accum_steps` (the optimizer update outside the loop is < 0.1% of a step).
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp

from dirroute_jax.model import flops as model_flops
from dirroute_jax.model import kernels
from dirroute_jax.model.variants import model_configs
from dirroute_jax.train import sharding
from dirroute_jax.train import step as step_lib

GIB = 1024**3
# HBM per chip (per GPU), bytes: for `--accelerator` with fake CPU devices (`--target` knows its
# own, train/targets.py).
ACCELERATORS = {
  "v4": 32 * GIB,
  "v5e": 16 * GIB,
  "v5p": 95 * GIB,
  "v6e": 32 * GIB,
  "h100": 80 * GIB,
  "h200": 141 * GIB,
  "a100": 80 * GIB,
}
# Warn when a compiled step needs more than this share of the device's memory: the allocator
# needs some room of its own (fragmentation, the runtime's buffers).
WARN_FRACTION = 0.90


@dataclasses.dataclass
class Plan:
  devices: int
  platform: str  # what it was compiled for: "cpu" stands in for the accelerator
  device_kind: str  # e.g. "TPU v5 lite", "NVIDIA H100 80GB HBM3", "cpu"
  compiler: str  # whose numbers these are, with its version
  kernels: dict  # model -> the attention kernel line (model/kernels.py)
  mesh: dict
  remat: str
  global_batch: int
  micro_batch_per_device: int
  seq_len: int
  grad_accum_steps: int
  param_count: dict  # model -> parameters (global)
  params_bytes: dict  # model -> bytes per device, from the shardings
  opt_bytes: dict  # model -> bytes per device, from the shardings
  argument_bytes: int  # memory_analysis(), per device
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  xla_flops: float  # cost_analysis(), per device, loop bodies counted once; 0: none given
  model_flops: float  # model/flops.py's convention, all models, all devices
  lower_seconds: float
  compile_seconds: float
  hbm_bytes: int | None = None  # per device, when the target is known
  target: str | None = None  # train/targets.py name, or None

  @property
  def state_bytes(self) -> int:
    return sum(self.params_bytes.values()) + sum(self.opt_bytes.values())

  @property
  def peak_bytes(self) -> int:
    """Live at once: inputs + outputs (donated outputs reuse their inputs) + temporaries."""
    return peak_bytes_of(
      self.argument_bytes, self.output_bytes, self.alias_bytes, self.temp_bytes, self.code_bytes
    )

  @property
  def flops_per_device(self) -> float:
    return self.xla_flops * self.grad_accum_steps


def peak_bytes_of(argument, output, alias, temp, code) -> int:
  return argument + output - alias + temp + code


def compiled_peak_bytes(compiled) -> int:
  """Per-device peak of a compiled executable, from its compiler's memory analysis."""
  m = compiled.memory_analysis()
  return peak_bytes_of(
    m.argument_size_in_bytes,
    m.output_size_in_bytes,
    m.alias_size_in_bytes,
    m.temp_size_in_bytes,
    m.generated_code_size_in_bytes,
  )


def device_memory_bytes(device) -> int | None:
  """A real device's memory (the allocator's limit), or None where jax knows none (CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:  # compile-only and CPU devices have no allocator to ask
    return None
  return int(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None


def memory_report(compiled, device) -> tuple[str, bool]:
  """(one line: the compiled step's peak per device against `device`'s memory, whether it is
  above WARN_FRACTION of it). For the run's log, before its first step."""
  peak = compiled_peak_bytes(compiled)
  limit = device_memory_bytes(device)
  if limit is None:
    return (
      f"Memory: the compiled train step needs {_gib(peak)} per device "
      f"({device.platform} reports no memory limit to compare with)"
    ), False
  share = peak / limit
  line = (
    f"Memory: the compiled train step needs {_gib(peak)} of {_gib(limit)} per device "
    f"({100 * share:.0f}%, from the compiler's memory analysis)"
  )
  if share > WARN_FRACTION:
    line += (
      f"; WARNING: above {100 * WARN_FRACTION:.0f}%, the allocator may run out: lower "
      "the micro-batch (grad_accum_steps), set model.remat=dots or full, or shard more "
      "(mesh.fsdp); `launch/plan.py --target=...` shows the effect without a run"
    )
  return line, share > WARN_FRACTION


def compiler_label(device) -> str:
  """Whose memory analysis this is, with the version that produced it."""
  from importlib import metadata

  def version(dist):
    try:
      return metadata.version(dist)
    except metadata.PackageNotFoundError:
      return "?"

  if device.platform == "tpu":
    return f"TPU compiler (libtpu {version('libtpu')}, jax {jax.__version__})"
  if device.platform == "gpu":
    return f"XLA:GPU (jax-cuda12-plugin {version('jax-cuda12-plugin')}, jax {jax.__version__})"
  return f"XLA:CPU (fake devices standing in for the chips: an estimate; jax {jax.__version__})"


def bytes_per_device(abstract_tree) -> int:
  """Bytes of the largest shard of every leaf, summed: what one device holds."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
    total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
  return total


def abstract_batch(trainer: step_lib.Trainer) -> dict:
  shape = (trainer.cfg.batch_size, trainer.cfg.seq_len)
  dtypes = {"inputs": jnp.int32, "targets": jnp.int32, "weights": jnp.float32}
  return {
    k: jax.ShapeDtypeStruct(shape, dtypes[k], sharding=trainer.batch_sharding)
    for k in step_lib.BATCH_KEYS
  }


def _remat(cfg) -> str:
  return str(cfg.model.get("remat", "n/a (no model.remat key in this version)"))


def make_plan(cfg, devices=None, hbm_bytes: int | None = None, target: str | None = None) -> Plan:
  """Lowers and compiles `cfg`'s train step for `devices` (default: all) without allocating.

  `devices` may be compile-only (train/targets.py): the numbers are then the target compiler's.
  """
  mesh = sharding.make_mesh(cfg.mesh, devices)
  trainer = step_lib.make_trainer(cfg, mesh)
  state = trainer.abstract_state()
  device = mesh.devices.flat[0]
  t0 = time.perf_counter()
  lowered = trainer.train_step.lower(state, abstract_batch(trainer))
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one per module
  models = state["models"]
  n = mesh.devices.size
  return Plan(
    devices=n,
    platform=device.platform,
    device_kind=device.device_kind,
    compiler=compiler_label(device),
    kernels={m: kernels.attention_impl_summary(mc, device) for m, mc in model_configs(cfg).items()},
    mesh=dict(mesh.shape),
    remat=_remat(cfg),
    hbm_bytes=hbm_bytes,
    target=target,
    global_batch=cfg.batch_size,
    seq_len=cfg.seq_len,
    grad_accum_steps=cfg.grad_accum_steps,
    micro_batch_per_device=cfg.batch_size
    // cfg.grad_accum_steps
    // sharding.data_parallel_size(mesh),
    param_count={
      m: sum(math.prod(x.shape) for x in jax.tree.leaves(s["params"])) for m, s in models.items()
    },
    params_bytes={m: bytes_per_device(s["params"]) for m, s in models.items()},
    opt_bytes={m: bytes_per_device(s["opt_state"]) for m, s in models.items()},
    argument_bytes=mem.argument_size_in_bytes,
    output_bytes=mem.output_size_in_bytes,
    alias_bytes=mem.alias_size_in_bytes,
    temp_bytes=mem.temp_size_in_bytes,
    code_bytes=mem.generated_code_size_in_bytes,
    xla_flops=float((cost or {}).get("flops", 0.0)),
    model_flops=sum(
      model_flops.flops_per_token(mc, cfg.seq_len) for mc in model_configs(cfg).values()
    )
    * cfg.batch_size
    * cfg.seq_len,
    lower_seconds=t1 - t0,
    compile_seconds=t2 - t1,
  )


def to_json(plan: Plan, **extra) -> dict:
  """The plan as plain JSON, with the derived numbers a table needs."""
  out = dataclasses.asdict(plan)
  out.update(
    peak_bytes=plan.peak_bytes,
    state_bytes=plan.state_bytes,
    flops_per_device=plan.flops_per_device,
    jax_version=jax.__version__,
    **extra,
  )
  return out


def fits(plan: Plan, accelerator: str | None = None) -> tuple[bool, int]:
  """(whether the peak fits one chip's HBM, that HBM in bytes): the target's own HBM, or that of
  `accelerator` (a key of ACCELERATORS) for a plan on fake devices."""
  if accelerator is None and plan.hbm_bytes:
    hbm = plan.hbm_bytes
  elif accelerator in ACCELERATORS:
    hbm = ACCELERATORS[accelerator]
  else:
    raise ValueError(f"accelerator {accelerator!r} is unknown; use one of {sorted(ACCELERATORS)}.")
  return plan.peak_bytes <= hbm, hbm


def _gib(b: float) -> str:
  if b >= GIB / 10:
    return f"{b / GIB:.3f} GiB"
  return f"{b / 1024**2:.3f} MiB"


def format_plan(plan: Plan, accelerator: str | None = None) -> str:
  mesh = " x ".join(f"{k} {v}" for k, v in plan.mesh.items())
  what = f"{plan.target}: " if plan.target else ""
  lines = [
    f"{what}devices {plan.devices} x {plan.device_kind} (mesh {mesh}), remat {plan.remat}",
    f"batch {plan.global_batch} x {plan.seq_len} tokens: {plan.grad_accum_steps} "
    f"micro-batch(es) of {plan.micro_batch_per_device} sequence(s) per device",
    f"compiler: {plan.compiler}",
    f"lower {plan.lower_seconds:.1f} s, compile {plan.compile_seconds:.1f} s",
  ]
  lines += [f"  {m:<9} {line}" for m, line in plan.kernels.items()]
  lines.append("per device, from the state shardings (exact):")
  for m in plan.params_bytes:
    lines.append(
      f"  {m:<9} params {_gib(plan.params_bytes[m]):>11}  optimizer "
      f"{_gib(plan.opt_bytes[m]):>11}  ({plan.param_count[m]:,} parameters)"
    )
  source = (
    "the compiler's memory_analysis"
    if plan.platform != "cpu"
    else "XLA:CPU's memory_analysis (approximates the accelerator's)"
  )
  lines += [
    f"  state     {_gib(plan.state_bytes):>11}",
    f"per device, from {source}:",
    f"  arguments {_gib(plan.argument_bytes):>11}  outputs {_gib(plan.output_bytes)}  "
    f"donated {_gib(plan.alias_bytes)}",
    f"  temps     {_gib(plan.temp_bytes):>11}  (activations, gradients, collectives)  "
    f"code {_gib(plan.code_bytes)}",
    f"  peak      {_gib(plan.peak_bytes):>11}  (arguments + outputs - donated + temps + code)",
    "FLOPs per step:",
  ]
  if plan.xla_flops:
    ratio = plan.flops_per_device * plan.devices / plan.model_flops
    lines.append(
      f"  compiler cost_analysis {plan.flops_per_device:.4g} per device, "
      f"{plan.flops_per_device * plan.devices:.4g} in all (loop body x "
      f"{plan.grad_accum_steps}; {ratio:.2f}x the model FLOPs)"
    )
  else:
    lines.append("  compiler cost_analysis: none given by this compiler")
  lines.append(f"  model FLOPs (model/flops.py convention) {plan.model_flops:.4g} in all")
  if accelerator or plan.hbm_bytes:
    ok, hbm = fits(plan, accelerator)
    chip = accelerator or plan.target
    share = plan.peak_bytes / hbm
    headroom = f"{100 * (1 - share):.0f}% headroom" if ok else f"{_gib(plan.peak_bytes - hbm)} over"
    lines.append(
      f"fits {chip} ({hbm / GIB:.0f} GiB HBM per chip): "
      f"{'YES' if ok else 'NO'}, peak = {100 * share:.0f}% of HBM ({headroom})"
    )
  return "\n".join(lines) + "\n"
