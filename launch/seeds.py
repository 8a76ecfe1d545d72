"""N seeds per router pooling, each training the routed model, its baseline and the
parameter-matched baseline on the same batches; paired 95% intervals over seeds.

  python launch/seeds.py --out=workdirs/seeds

Trains --seeds (default 0-4) under each of --poolings (default sequence_mean and causal_mean)
with --config (default configs/seeds.py), then writes OUT/seeds.json (every per-seed number
and the intervals), OUT/seeds.md (the tables for REPRODUCTION.md) and OUT/ppl_vs_step.png
(held-out PPL versus step, one line per seed, one panel per pooling). A rerun skips finished
seeds and resumes an interrupted one; --aggregate_only rewrites the outputs from finished runs.

Size: configs/seeds.py (configs/tiny.py's models, 0.26M routed / 0.23M baseline, 1000 steps of
16 x 128 tokens, the whole held-out split every 100 steps), because 10 runs of three models
must fit in about 45 minutes on 2 CPU cores: one step of the three took 140 ms on the idle
machine, which extrapolates (an estimate) to about 32 minutes with evaluation and start-up;
each run's measured time is recorded in seeds.json. REPRODUCTION.md gives the details.
Another size: --config=configs/small.py (and --config.eval_every etc.).
"""

import os

import jax
from absl import app, flags
from ml_collections import config_flags

from dirroute_jax.cli import (
  exit_if_stopped,
  exit_on_train_error,
  fail,
  parse_flags,
  print_outputs,
)
from dirroute_jax.config import ConfigError
from dirroute_jax.experiments import seeds
from dirroute_jax.model.variants import MODEL_VARIANTS

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  os.path.join(os.path.dirname(__file__), "..", "configs", "seeds.py"),
  "configs/*.py file (its `models` is set by --models).",
  lock_config=True,
)
_OUT = flags.DEFINE_string(
  "out",
  None,
  "Output directory (workdirs and reports), e.g. "
  "workdirs/seeds; a committed results/ directory is copied from it.",
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds, comma-separated.")
_POOLINGS = flags.DEFINE_list("poolings", list(seeds.POOLINGS), "Router poolings.")
_MODELS = flags.DEFINE_list(
  "models",
  list(seeds.MODELS),
  "Models each run trains in its one jitted step (model/variants.py), e.g. "
  "routed,flops_matched for the compute-matched control; a new set needs an --out of its own.",
)
_COMPILE_CACHE = flags.DEFINE_string(
  "compilation_cache",
  os.path.expanduser("~/.cache/dirroute_jax/jax_compilation_cache"),
  "Persistent XLA compilation cache ('' disables), as in launch/train.py: every seed after "
  "the first of a pooling reuses the compiled steps (about 20 s per run on 2 CPU cores).",
)
_AGGREGATE_ONLY = flags.DEFINE_bool(
  "aggregate_only", False, "Only rewrite the outputs from the runs already finished."
)
_CLAIMS_SEED = flags.DEFINE_integer(
  "claims_seed",
  0,
  "After aggregating, run every interpretability analysis on this seed's "
  "runs and write OUT/claims.md from them (a few minutes per pooling); -1 skips it.",
)
flags.mark_flags_as_required(["out"])


def _seed_list() -> list[int]:
  try:
    seed_list = [int(s) for s in _SEEDS.value]
  except ValueError:
    seed_list = []
  if not seed_list or len(set(seed_list)) != len(seed_list):
    raise ConfigError(
      f"--seeds={','.join(_SEEDS.value)}: give distinct integers, e.g. --seeds=0,1,2,3,4."
    )
  bad = [p for p in _POOLINGS.value if p not in seeds.POOLINGS]
  if bad or not _POOLINGS.value:
    raise ConfigError(
      f"--poolings={','.join(_POOLINGS.value)}: use {','.join(seeds.POOLINGS)} (or one of them)."
    )
  bad = [m for m in _MODELS.value if m not in MODEL_VARIANTS]
  if bad or "routed" not in _MODELS.value or len(set(_MODELS.value)) != len(_MODELS.value):
    raise ConfigError(
      f"--models={','.join(_MODELS.value)}: name routed and others of "
      f"{','.join(MODEL_VARIANTS)}, each once (the comparisons are against routed)."
    )
  return seed_list


def main(argv):
  del argv
  try:
    seed_list = _seed_list()
  except ConfigError as e:
    fail(str(e))
  if _COMPILE_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _COMPILE_CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  if not _AGGREGATE_ONLY.value:
    with exit_on_train_error():  # launch/train.py's exit statuses (dirroute_jax/exit_codes.py)
      stopped = seeds.run_seeds(
        _CONFIG.value, _OUT.value, seed_list, _POOLINGS.value, models=_MODELS.value
      )
    if stopped is not None:  # finished seeds are kept; SIGTERM exits PREEMPTED
      exit_if_stopped(stopped, skipped="the remaining seeds and the aggregation")
  try:
    paths = seeds.write_outputs(_OUT.value, _POOLINGS.value, seed_list)
    if _CLAIMS_SEED.value >= 0:
      paths.update(seeds.write_claims(_OUT.value, _CLAIMS_SEED.value, _POOLINGS.value))
  except (FileNotFoundError, ValueError) as e:  # nothing finished yet, or unusable results
    fail(str(e))
  print_outputs(paths)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
