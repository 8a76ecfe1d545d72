"""Step time of the baseline alone, the routed model alone, the joint pair step, and the two
single-model steps run back to back, measured interleaved in one process.

  python benchmarks/step_time.py --configs=tiny,small --repeats=7 --steps=10

Every variant is timed in each repeat, round-robin, so slow drift of the machine (another
process, thermal state) hits all of them alike; ratios come from medians. Batches are
synthetic and already on device, so this measures the step; the input pipeline is measured
separately (time to produce one batch from the real embedded-corpus pipeline). Prints one
markdown table per config, ready for BENCHMARKS.md.
"""

import copy
import os
import platform
import statistics
import time

from absl import app, flags
import jax
import numpy as np

from dirroute_jax.cli import parse_flags
from dirroute_jax.config import load_config_file
from dirroute_jax.data.pipeline import make_data
from dirroute_jax.train import sharding, step

_CONFIGS = flags.DEFINE_list("configs", ["tiny", "small"], "configs/<name>.py to measure.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Interleaved repeats per variant.")
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per timed repeat.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Override batch_size (0: the config's).")
_POOLINGS = flags.DEFINE_list("poolings", ["causal_mean", "sequence_mean"], "Router poolings.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Variant:
  """One jitted step and its live state; `run(n)` times n steps."""

  def __init__(self, cfg, models: str, mesh):
    cfg = copy.deepcopy(cfg)
    cfg.models = models
    self.trainer = step.make_trainer(cfg, mesh)
    self.state = self.trainer.init_state(jax.random.key(0))
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.model.vocab_size, (cfg.batch_size, cfg.seq_len + 1), np.int32)
    self.batch = jax.device_put({"inputs": x[:, :-1], "targets": x[:, 1:],
                                 "weights": np.ones(x[:, 1:].shape, np.float32)},
                                self.trainer.batch_sharding)

  def run(self, n: int) -> None:
    for _ in range(n):
      self.state, metrics = self.trainer.train_step(self.state, self.batch)
    jax.block_until_ready(metrics)


def measure(cfg, repeats: int, steps: int) -> dict:
  mesh = sharding.make_mesh(cfg.mesh)
  variants = {name: Variant(cfg, models, mesh) for name, models in
              (("baseline", "baseline"), ("routed", "routed"), ("pair", "routed,baseline"))}
  timings = {name: [] for name in ("baseline", "routed", "pair", "separate")}
  with jax.set_mesh(mesh):
    for v in variants.values():
      v.run(2)  # compile + one warm step
    for _ in range(repeats):
      for name in ("baseline", "routed", "pair", "separate"):
        t0 = time.perf_counter()
        if name == "separate":  # the two single-model executables back to back
          for _ in range(steps):
            variants["routed"].run(1)
            variants["baseline"].run(1)
        else:
          variants[name].run(steps)
        timings[name].append((time.perf_counter() - t0) / steps)
  compiles = {name: v.trainer.train_step._cache_size() for name, v in variants.items()}
  return {"timings": timings, "compiles": compiles}


def loader_time(cfg, n: int = 50) -> float:
  data = make_data(cfg)
  it = data.train_iter(0)
  next(it)
  t0 = time.perf_counter()
  for _ in range(n):
    next(it)
  return (time.perf_counter() - t0) / n


def main(argv):
  del argv
  print(f"# step_time.py: {jax.devices()[0].device_kind} x {jax.device_count()}, "
        f"{os.cpu_count()} CPU cores, {platform.platform()}, jax {jax.__version__}, "
        f"{time.strftime('%Y-%m-%d')}")
  for name in _CONFIGS.value:
    cfg = load_config_file(os.path.join(REPO, "configs", f"{name}.py"))
    if _BATCH.value:
      cfg.batch_size = _BATCH.value
    tokens = cfg.batch_size * cfg.seq_len
    loader_ms = 1e3 * loader_time(cfg)
    print(f"\n## {name}: batch {cfg.batch_size} x {cfg.seq_len}, {_REPEATS.value} interleaved "
          f"repeats x {_STEPS.value} steps; input pipeline {loader_ms:.2f} ms/batch\n")
    print("| pooling | variant | ms/step min | median | max | tokens/s (median) |")
    print("|---|---|---|---|---|---|")
    ratios = []
    for pooling in _POOLINGS.value:
      cfg.model.pooling = pooling
      result = measure(cfg, _REPEATS.value, _STEPS.value)
      med = {k: statistics.median(v) for k, v in result["timings"].items()}
      for variant, ts in result["timings"].items():
        print(f"| {pooling} | {variant} | {1e3 * min(ts):.2f} | {1e3 * med[variant]:.2f} | "
              f"{1e3 * max(ts):.2f} | {tokens / med[variant]:,.0f} |")
      ratios.append((pooling, med["routed"] / med["baseline"], med["pair"] / med["separate"],
                     result["compiles"], med["pair"] / (loader_ms / 1e3)))
    print("\n| pooling | routed / baseline | pair / separate | compiles per variant | "
          "pair step / input pipeline |")
    print("|---|---|---|---|---|")
    for pooling, rb, ps, compiles, vs_loader in ratios:
      print(f"| {pooling} | {rb:.3f} | {ps:.3f} | {compiles} | {vs_loader:.0f}x |")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
