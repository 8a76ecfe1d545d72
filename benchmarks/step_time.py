"""Step time, tokens/s, MFU and peak device memory of the baseline alone, the routed model alone,
the joint pair step, and the two single-model steps run back to back ("separate").

  python benchmarks/step_time.py --config=configs/433m.py                      # GPU / TPU
  python benchmarks/step_time.py --config=configs/tiny.py --interleave --loader  # CPU rows

Batches are synthetic token ids already on the device (no text loader), so this measures the
train step. Any config key can be overridden (--config.batch_size=..., --config.model.remat=...,
--config.model.attention_impl=xla).

Two modes:
- default: one variant at a time, each in a fresh process (this script re-run with --child):
  the device holds one variant's states only, `device.memory_stats()`'s peak is that
  variant's own, and a variant that runs out of memory is reported as such without ending the
  table. This is what fits the 433M pair on one 80 GB GPU.
- --interleave: all variants of a pooling resident in one process and timed round-robin, so
  slow drift of a shared machine (other processes, thermal state) hits all of them alike; ratios
  come from medians. For CPUs and small configs; no per-variant peak memory.

On a CPU backend the tables also give ratios of process CPU time per step, which other
processes on a shared machine inflate far less than wall time.

Duration: every variant compiles once, then runs 2 warm-up steps and --repeats x --steps timed
steps. With defaults that is 7 variant runs (baseline once, then routed, pair and separate per
pooling). Measured: tiny with --interleave --repeats=7 --steps=10 took 4 minutes on a loaded
2-core CPU (BENCHMARKS.md). Not yet measured: 433M on a GPU, where each run is a fresh
process and a compile of the 433M step (30-60 s for XLA:CPU in launch/plan.py's table in
BENCHMARKS.md) before 27 steps of 128 x 1024 tokens. Progress (which variant, compiling,
repeat i/n, time left at the pace so far) goes to stderr; the markdown tables, in the format
of BENCHMARKS.md, go to stdout.
"""

from __future__ import annotations

import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dirroute_jax.cli import parse_flags
from dirroute_jax.model import flops as model_flops
from dirroute_jax.model.variants import model_variant
from dirroute_jax.train import flops, sharding, step

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file.", lock_config=True)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per variant.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed repeat.")
_POOLINGS = flags.DEFINE_list("poolings", ["causal_mean", "sequence_mean"], "Router poolings.")
_INTERLEAVE = flags.DEFINE_bool(
  "interleave",
  False,
  "Keep all variants of a pooling resident and time them round-robin "
  "(noisy shared CPUs); default: one variant per fresh process (accelerators, large configs).",
)
_LOADER = flags.DEFINE_bool(
  "loader",
  False,
  "Also time the real input pipeline of the config's data source (ms per "
  "batch) and compare the pair step with it.",
)
_CHILD = flags.DEFINE_string(
  "child",
  None,
  "Internal: measure one POOLING:VARIANT and print "
  "its result as JSON (what the default mode runs per process).",
)
flags.mark_flags_as_required(["config"])

# The executables one timed step runs, per variant.
VARIANTS = {
  "baseline": ("baseline",),
  "routed": ("routed",),
  "pair": ("routed,baseline",),
  "separate": ("routed", "baseline"),
}


def say(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


class Executable:
  """One jitted train step with its live state and a synthetic batch; `run(n)` runs n steps."""

  def __init__(self, cfg, models: str, mesh):
    cfg = copy.deepcopy(cfg)
    cfg.models = models
    self.trainer = step.make_trainer(cfg, mesh)
    self.state = self.trainer.init_state(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.model.vocab_size, (cfg.batch_size, cfg.seq_len + 1), np.int32)
    self.batch = jax.device_put(
      {"inputs": x[:, :-1], "targets": x[:, 1:], "weights": np.ones(x[:, 1:].shape, np.float32)},
      self.trainer.batch_sharding,
    )

  def run(self, n: int) -> None:
    for _ in range(n):
      self.state, metrics = self.trainer.train_step(self.state, self.batch)
    jax.block_until_ready(metrics)


def run_variant(parts: list[Executable], steps: int) -> tuple[float, float]:
  """Wall and process-CPU seconds per step of one variant (its executables back to back).

  On a CPU backend the process CPU time is the step's own compute, which other processes on a
  shared machine do not inflate the way they inflate wall time."""
  t0, c0 = time.perf_counter(), time.process_time()
  if len(parts) == 1:
    parts[0].run(steps)
  else:
    for _ in range(steps):
      for p in parts:
        p.run(1)
  return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def build(cfg, name: str, mesh, label: str) -> list[Executable]:
  say(f"[{label}] building state and compiling the step...")
  t0 = time.perf_counter()
  parts = [Executable(cfg, models, mesh) for models in VARIANTS[name]]
  for p in parts:
    p.run(2)  # compile + one warm step
  say(f"[{label}] compiled and warmed up in {time.perf_counter() - t0:.1f} s")
  return parts


def peak_memory_bytes() -> int | None:
  """The largest `peak_bytes_in_use` over this process's devices; None where not reported."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
  peaks = [p for p in peaks if p is not None]
  return max(peaks) if peaks else None


def measure_one(cfg, pooling: str, name: str, repeats: int, steps: int) -> dict:
  """One variant alone in this process (the default mode's child)."""
  cfg.model.pooling = pooling
  mesh = sharding.make_mesh(cfg.mesh)
  label = f"{name}, {pooling}" if name != "baseline" else name
  with jax.set_mesh(mesh):
    parts = build(cfg, name, mesh, label)
    times, cpu_times = [], []
    for i in range(repeats):
      wall, cpu = run_variant(parts, steps)
      times.append(wall)
      cpu_times.append(cpu)
      say(f"[{label}] repeat {i + 1}/{repeats}: {1e3 * wall:.2f} ms/step")
  return {
    "times": times,
    "cpu_times": cpu_times,
    "peak": peak_memory_bytes(),
    "compiles": [p.trainer.train_step._cache_size() for p in parts],
  }


def measure_interleaved(cfg, pooling: str, repeats: int, steps: int) -> dict:
  """Every variant resident, timed round-robin per repeat; freed before returning."""
  cfg.model.pooling = pooling
  mesh = sharding.make_mesh(cfg.mesh)
  results = {}
  with jax.set_mesh(mesh):
    single = {n: build(cfg, n, mesh, f"{n}, {pooling}") for n in ("baseline", "routed", "pair")}
    variants = {**single, "separate": single["routed"] + single["baseline"]}
    times, cpu_times = {n: [] for n in variants}, {n: [] for n in variants}
    for i in range(repeats):
      for n, parts in variants.items():
        wall, cpu = run_variant(parts, steps)
        times[n].append(wall)
        cpu_times[n].append(cpu)
      say(
        f"[{pooling}] repeat {i + 1}/{repeats}: "
        + ", ".join(f"{n} {1e3 * t[-1]:.2f}" for n, t in times.items())
        + " ms/step"
      )
    for n, parts in variants.items():
      results[n] = {
        "times": times[n],
        "cpu_times": cpu_times[n],
        "peak": None,
        "compiles": [p.trainer.train_step._cache_size() for p in parts],
      }
  del single, variants
  jax.clear_caches()
  gc.collect()
  return results


def measure_in_child(pooling: str, name: str) -> dict:
  """Runs this script with --child=POOLING:VARIANT in a fresh process; its stderr streams."""
  proc = subprocess.run(
    [sys.executable, os.path.abspath(__file__), *sys.argv[1:], f"--child={pooling}:{name}"],
    stdout=subprocess.PIPE,
    text=True,
  )
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode != 0 or not lines:
    return {"failed": f"exit code {proc.returncode} (out of memory? see its stderr above)"}
  return json.loads(lines[-1][len("RESULT ") :])


def loader_ms(cfg, n: int = 50) -> float:
  from dirroute_jax.data.pipeline import make_data

  it = make_data(cfg).train_iter(0)
  next(it)
  t0 = time.perf_counter()
  for _ in range(n):
    next(it)
  return 1e3 * (time.perf_counter() - t0) / n


def _fmt_bytes(b) -> str:
  return "n/a" if b is None else f"{b / 2**30:.2f} GiB"


def _flops_per_token(cfg, name: str) -> float:
  models = [m for models in VARIANTS[name] for m in models.split(",")]
  return sum(model_flops.flops_per_token(model_variant(cfg.model, m), cfg.seq_len) for m in models)


def main(argv):
  del argv
  cfg = _CONFIG.value
  if _CHILD.value:
    pooling, name = _CHILD.value.split(":")
    result = measure_one(cfg, pooling, name, _REPEATS.value, _STEPS.value)
    print("RESULT " + json.dumps(result), flush=True)
    return

  config_name = os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]))[:-3]
  overrides = " ".join(a for a in sys.argv[1:] if a.startswith("--config."))
  device = jax.devices()[0]
  print(
    f"# step_time.py: {device.device_kind} x {jax.device_count()}, {os.cpu_count()} CPU "
    f"cores (load average {os.getloadavg()[0]:.1f} at start), {platform.platform()}, "
    f"jax {jax.__version__}, {time.strftime('%Y-%m-%d')}"
  )
  peak_flops = flops.peak_flops_per_device(device.device_kind)
  tokens = cfg.batch_size * cfg.seq_len
  micro = cfg.batch_size // cfg.grad_accum_steps
  runs = [("causal_mean", "baseline")] + [
    (p, n) for p in _POOLINGS.value for n in ("routed", "pair", "separate")
  ]
  mode = "interleaved, all variants resident" if _INTERLEAVE.value else "one variant per process"
  say(
    f"{config_name}: {len(_POOLINGS.value) if _INTERLEAVE.value else len(runs)} "
    f"{'interleaved groups' if _INTERLEAVE.value else 'variant runs'}, each compiling "
    f"then timing 2 + {_REPEATS.value} x {_STEPS.value} steps ({mode})."
  )
  loader = loader_ms(cfg) if _LOADER.value else None

  t_start, results = time.perf_counter(), {}
  if _INTERLEAVE.value:
    for i, pooling in enumerate(_POOLINGS.value):
      for name, r in measure_interleaved(cfg, pooling, _REPEATS.value, _STEPS.value).items():
        results[(pooling, name)] = r
      _say_pace(t_start, i + 1, len(_POOLINGS.value))
  else:
    for i, (pooling, name) in enumerate(runs):
      results[(pooling, name)] = measure_in_child(pooling, name)
      _say_pace(t_start, i + 1, len(runs))

  print(
    f"\n## {config_name}{' ' + overrides if overrides else ''}: batch {cfg.batch_size} x "
    f"{cfg.seq_len} (micro-batch {micro} x {cfg.grad_accum_steps}), {mode}, "
    f"{_REPEATS.value} repeats x {_STEPS.value} steps"
    + (f"; input pipeline {loader:.2f} ms/batch" if loader is not None else "")
    + "\n"
  )
  on_cpu = device.platform == "cpu"  # elsewhere process CPU time is the host's, not the step's
  print(
    "| pooling | variant | ms/step min | median | max | tokens/s (median) | "
    "CPU-time ms/step (median) | MFU | peak memory |"
  )
  print("|---|---|---|---|---|---|---|---|---|")
  med, cpu_med = {}, {}
  for (pooling, name), r in results.items():
    shown = pooling if _INTERLEAVE.value or name != "baseline" else "(none)"
    if "failed" in r:
      print(f"| {shown} | {name} | failed: {r['failed']} | | | | | | |")
      continue
    ts, key = r["times"], (pooling, name)
    med[key] = statistics.median(ts)
    if on_cpu:
      cpu_med[key] = statistics.median(r["cpu_times"])
    per_device = tokens * _flops_per_token(cfg, name) / med[key] / jax.device_count()
    mfu = f"{100 * per_device / peak_flops:.1f}%" if peak_flops else "n/a"
    cpu = f"{1e3 * cpu_med[key]:.2f}" if on_cpu else "n/a"
    print(
      f"| {shown} | {name} | {1e3 * min(ts):.2f} | {1e3 * med[key]:.2f} | "
      f"{1e3 * max(ts):.2f} | {tokens / med[key]:,.0f} | {cpu} | {mfu} | "
      f"{_fmt_bytes(r['peak'])} |"
    )

  print(
    "\n| pooling | routed / baseline | same, CPU time | model-FLOP ratio (model/flops.py) | "
    "pair / separate | same, CPU time | compiles per variant | pair step / input pipeline |"
  )
  print("|---|---|---|---|---|---|---|---|")
  for pooling in _POOLINGS.value:

    def ratio(times, a, b):
      base_key = (pooling, b) if (pooling, b) in times else ("causal_mean", b)  # noqa: B023
      x, y = times.get((pooling, a)), times.get(base_key)  # noqa: B023
      return "n/a" if x is None or y is None else f"{x / y:.3f}"

    cfg.model.pooling = pooling
    flop_ratio = _flops_per_token(cfg, "routed") / _flops_per_token(cfg, "baseline")
    compiles = " / ".join(
      str(sum(results[key]["compiles"])) if "compiles" in results.get(key, {}) else "n/a"
      for key in (
        (pooling if _INTERLEAVE.value else "causal_mean", "baseline"),
        (pooling, "routed"),
        (pooling, "pair"),
      )
    )
    pair = med.get((pooling, "pair"))
    vs_loader = f"{pair / (loader / 1e3):.0f}x" if loader is not None and pair else "n/a"
    print(
      f"| {pooling} | {ratio(med, 'routed', 'baseline')} | "
      f"{ratio(cpu_med, 'routed', 'baseline')} | {flop_ratio:.3f} | "
      f"{ratio(med, 'pair', 'separate')} | {ratio(cpu_med, 'pair', 'separate')} | "
      f"{compiles} | {vs_loader} |"
    )


def _say_pace(t_start: float, done: int, total: int) -> None:
  elapsed = time.perf_counter() - t_start
  left = elapsed / done * (total - done)
  say(
    f"-- {done}/{total} done, {elapsed / 60:.1f} min elapsed"
    + (f"; about {left / 60:.1f} min left at this pace" if done < total else "")
  )


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
