"""Trains the routed model and its baseline side by side in one jitted step.

  python launch/train.py --config=configs/tiny.py --workdir=/tmp/dirroute_tiny
  python launch/train.py --config=configs/433m.py --workdir=gs://BUCKET/run \
      --config.data.files='/data/fineweb/sample/10BT/*.parquet'

Multi-host: run the same command in every process. On Cloud TPU and under SLURM `srun` the
processes find each other by themselves (--distributed=auto); elsewhere add
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (see train/distributed.py).

Rerunning the same command resumes from the latest complete checkpoint in --workdir; a resume
whose config changes what the run means is refused unless --allow_config_change. Ctrl-C or
SIGTERM saves at the next step. Exit statuses: dirroute_jax/exit_codes.py (SIGTERM -> 75,
PREEMPTED: rerun to resume; 2 bad flags/config, 3 diverged, 4 I/O, 5 workdir busy).
"""

import os
import sys

from absl import app, flags
import jax

from dirroute_jax import exit_codes
from dirroute_jax.cli import define_train_flags, fail, parse_flags
from dirroute_jax.config import ConfigError
from dirroute_jax.train import checkpoint, distributed, lock
from dirroute_jax.train.loop import train
from dirroute_jax.train.metrics import MetricsFileError

_FLAGS = define_train_flags()
_COMPILE_CACHE = flags.DEFINE_string(
    "compilation_cache", os.path.expanduser("~/.cache/dirroute_jax/jax_compilation_cache"),
    "Persistent XLA compilation cache ('' disables); makes resumes start fast.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", distributed.MODES,
    "Multi-process start-up: auto = when the flags below are given or SLURM / Cloud TPU / "
    "Open MPI runs several processes; on = always (JAX detects what is unset); off = never.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0's coordinator (multi-process).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's rank, 0-based.")
_LOCAL_DEVICES = flags.DEFINE_string("local_device_ids", None,
                                     "Comma-separated local device ids this process drives.")
flags.mark_flags_as_required(["config", "workdir"])


# What each failure exits with (the table is in dirroute_jax/exit_codes.py). Order matters:
# the first matching class wins.
_EXIT_CODES = (
    (lock.WorkdirBusyError, exit_codes.BUSY),
    (FloatingPointError, exit_codes.DIVERGED),  # loop.Diverged, NonFiniteStateError
    (checkpoint.CheckpointMismatchError, exit_codes.USAGE),  # another config's checkpoint
    (checkpoint.CheckpointError, exit_codes.IO_ERROR),
    (MetricsFileError, exit_codes.IO_ERROR),
    (OSError, exit_codes.IO_ERROR),  # disk full, permissions, a vanished mount
    (ConfigError, exit_codes.USAGE),
    (ValueError, exit_codes.USAGE),  # bad data files and other input errors
)


def main(argv):
  del argv
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           _LOCAL_DEVICES.value, mode=_DISTRIBUTED.value)
  except ValueError as e:
    fail(str(e))
  if _COMPILE_CACHE.value:
    jax.config.update("jax_compilation_cache_dir", _COMPILE_CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  try:
    summary = train(_FLAGS.config.value, _FLAGS.workdir.value,
                    allow_config_change=_FLAGS.allow_config_change.value)
  except tuple(cls for cls, _ in _EXIT_CODES) as e:
    code = next(code for cls, code in _EXIT_CODES if isinstance(e, cls))
    message = (f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename
               else str(e))
    fail(message, code)
  if summary.preempted:
    print(f"Exiting with status {exit_codes.describe(exit_codes.PREEMPTED)}: rerun the same "
          "command to resume.")
    sys.exit(exit_codes.PREEMPTED)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
