"""Memory and compute plan of the joint train step, compiled ahead of time on fake devices.

Renting a pod to find out that the step does not fit is slow and costly. Here the real step
(`make_trainer(cfg, mesh).train_step`) is lowered with abstract inputs (ShapeDtypeStructs
carrying the target shardings: nothing is allocated) and compiled for N CPU devices standing in
for N accelerator chips. Two sources of numbers:

  - the state shardings, exactly: params and optimizer bytes per device are each leaf's shard
    shape (`sharding.shard_shape`) times its dtype size, the biggest shard on any device;
  - XLA's analyses of the compiled per-device program, approximately: `memory_analysis()`
    (arguments, outputs, aliased = donated, temporaries = activations, gradients, gathered
    weights; code) and `cost_analysis()` (FLOPs). Arguments and outputs are exact; temporaries
    come from XLA:CPU's fusion, scheduling and buffer assignment, not the TPU's or GPU's. On
    433m they behave unlike an accelerator's: they shrink little with the micro-batch and
    model.remat=full RAISES them. Treat the verdict as a screen; `launch/plan.py
    --real_devices` on the accelerator machine gives its own numbers.

XLA counts a `while` loop's body once, so the gradient-accumulation scan's FLOPs are scaled by
`grad_accum_steps` (the optimizer update outside the loop is < 0.1% of a step).
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp

from dirroute_jax.train import flops as flops_lib, sharding, step as step_lib

GIB = 1024**3
# HBM per chip (per GPU), bytes.
ACCELERATORS = {"v4": 32 * GIB, "v5e": 16 * GIB, "v5p": 95 * GIB, "h100": 80 * GIB}


@dataclasses.dataclass
class Plan:
  devices: int
  platform: str  # what it was compiled for: "cpu" stands in for the accelerator
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
  xla_flops: float  # cost_analysis(), per device, loop bodies counted once
  model_flops: float  # train/flops.py's convention, all models, all devices
  lower_seconds: float
  compile_seconds: float

  @property
  def state_bytes(self) -> int:
    return sum(self.params_bytes.values()) + sum(self.opt_bytes.values())

  @property
  def peak_bytes(self) -> int:
    """Live at once: inputs + outputs (donated outputs reuse their inputs) + temporaries."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
            + self.code_bytes)

  @property
  def flops_per_device(self) -> float:
    return self.xla_flops * self.grad_accum_steps


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
  return {k: jax.ShapeDtypeStruct(shape, dtypes[k], sharding=trainer.batch_sharding)
          for k in step_lib.BATCH_KEYS}


def _remat(cfg) -> str:
  return str(cfg.model.get("remat", "n/a (no model.remat key in this version)"))


def make_plan(cfg, devices=None) -> Plan:
  """Lowers and compiles `cfg`'s train step for `devices` (default: all) without allocating."""
  mesh = sharding.make_mesh(cfg.mesh, devices)
  trainer = step_lib.make_trainer(cfg, mesh)
  state = trainer.abstract_state()
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
      devices=n, platform=mesh.devices.flat[0].platform, mesh=dict(mesh.shape),
      remat=_remat(cfg),
      global_batch=cfg.batch_size, seq_len=cfg.seq_len, grad_accum_steps=cfg.grad_accum_steps,
      micro_batch_per_device=cfg.batch_size // cfg.grad_accum_steps
      // sharding.data_parallel_size(mesh),
      param_count={m: sum(math.prod(x.shape) for x in jax.tree.leaves(s["params"]))
                   for m, s in models.items()},
      params_bytes={m: bytes_per_device(s["params"]) for m, s in models.items()},
      opt_bytes={m: bytes_per_device(s["opt_state"]) for m, s in models.items()},
      argument_bytes=mem.argument_size_in_bytes, output_bytes=mem.output_size_in_bytes,
      alias_bytes=mem.alias_size_in_bytes, temp_bytes=mem.temp_size_in_bytes,
      code_bytes=mem.generated_code_size_in_bytes, xla_flops=float(cost.get("flops", 0.0)),
      model_flops=sum(flops_lib.flops_per_token(mc, cfg.seq_len)
                      for mc in step_lib.model_configs(cfg).values())
      * cfg.batch_size * cfg.seq_len,
      lower_seconds=t1 - t0, compile_seconds=t2 - t1)


def fits(plan: Plan, accelerator: str) -> tuple[bool, int]:
  """(whether the estimated peak fits one chip's HBM, that HBM in bytes)."""
  if accelerator not in ACCELERATORS:
    raise ValueError(f"accelerator {accelerator!r} is unknown; use one of "
                     f"{sorted(ACCELERATORS)}.")
  hbm = ACCELERATORS[accelerator]
  return plan.peak_bytes <= hbm, hbm


def _gib(b: float) -> str:
  if b >= GIB / 10:
    return f"{b / GIB:.3f} GiB"
  return f"{b / 1024**2:.3f} MiB"


def format_plan(plan: Plan, accelerator: str | None = None) -> str:
  mesh = " x ".join(f"{k} {v}" for k, v in plan.mesh.items())
  lines = [
      f"devices {plan.devices} (mesh {mesh}), remat {plan.remat}",
      f"batch {plan.global_batch} x {plan.seq_len} tokens: {plan.grad_accum_steps} "
      f"micro-batch(es) of {plan.micro_batch_per_device} sequence(s) per device",
      f"{plan.platform} lower {plan.lower_seconds:.1f} s, compile {plan.compile_seconds:.1f} s",
      "per device, from the state shardings (exact):",
  ]
  for m in plan.params_bytes:
    lines.append(f"  {m:<9} params {_gib(plan.params_bytes[m]):>11}  optimizer "
                 f"{_gib(plan.opt_bytes[m]):>11}  ({plan.param_count[m]:,} parameters)")
  lines += [
      f"  state     {_gib(plan.state_bytes):>11}",
      f"per device, from {plan.platform} memory_analysis"
      + (" (approximates the accelerator's):" if plan.platform == "cpu" else ":"),
      f"  arguments {_gib(plan.argument_bytes):>11}  outputs {_gib(plan.output_bytes)}  "
      f"donated {_gib(plan.alias_bytes)}",
      f"  temps     {_gib(plan.temp_bytes):>11}  (activations, gradients, collectives)  "
      f"code {_gib(plan.code_bytes)}",
      f"  peak      {_gib(plan.peak_bytes):>11}  (arguments + outputs - donated + temps + code)",
      "FLOPs per step:",
      f"  XLA cost_analysis {plan.flops_per_device:.4g} per device, "
      f"{plan.flops_per_device * plan.devices:.4g} in all (loop body x {plan.grad_accum_steps})",
      f"  model FLOPs (train/flops.py convention) {plan.model_flops:.4g} in all",
  ]
  if accelerator:
    ok, hbm = fits(plan, accelerator)
    lines.append(f"fits {accelerator} ({hbm / GIB:.0f} GiB HBM per chip): "
                 f"{'YES' if ok else 'NO'}, peak = {100 * plan.peak_bytes / hbm:.0f}% of HBM")
  return "\n".join(lines) + "\n"
