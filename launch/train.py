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

# Before anything slow: a SIGTERM or Ctrl-C during imports and start-up is recorded, and
# acted on once training's own handler is in place (dirroute_jax/train/signals.py).
from dirroute_jax.train import signals  # pylint: disable=g-bad-import-order

signals.install_early()

import jax  # noqa: E402
from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position  # noqa: E402

from dirroute_jax.cli import (  # noqa: E402
  define_train_flags,
  exit_if_stopped,
  exit_on_train_error,
  fail,
  parse_flags,
)
from dirroute_jax.train import distributed  # noqa: E402
from dirroute_jax.train.loop import train  # noqa: E402

_FLAGS = define_train_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  try:
    distributed.initialize(
      _FLAGS.coordinator_address.value,
      _FLAGS.num_processes.value,
      _FLAGS.process_id.value,
      _FLAGS.local_device_ids.value,
      mode=_FLAGS.distributed.value,
    )
  except ValueError as e:
    fail(str(e))
  if _FLAGS.compilation_cache.value:
    jax.config.update("jax_compilation_cache_dir", _FLAGS.compilation_cache.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  with exit_on_train_error(_FLAGS.workdir.value):
    summary = train(
      _FLAGS.config.value,
      _FLAGS.workdir.value,
      allow_config_change=_FLAGS.allow_config_change.value,
    )
  exit_if_stopped(summary)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
