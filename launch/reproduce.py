"""Reproduce the paper's findings at small scale, with and without the router's future leak.

  python launch/reproduce.py --out=workdirs/small

Trains two routed/baseline pairs on the embedded corpus with configs/small.py (same seed, same
batches): one with the paper's `sequence_mean` router, one with `causal_mean`. Then writes the
interpretability report of each and a claims table (OUT/claims.md) with the paper's number
beside ours under each pooling. One seed per pooling: REPRODUCTION.md's numbers come from
launch/seeds.py (five seeds, intervals). Write to workdirs/, not into the committed results/.

Rerunning the same command resumes whatever is unfinished. Ctrl-C or SIGTERM saves a
checkpoint of the run in progress and stops before its analyses; a failure (busy workdir,
divergence, checkpoint or disk error, bad config) is one line. Exit statuses as
launch/train.py's (dirroute_jax/exit_codes.py): 75 PREEMPTED (SIGTERM: rerun), 0 after Ctrl-C.
"""

import os

from absl import app, flags
from ml_collections import config_flags

from dirroute_jax.cli import parse_flags
from dirroute_jax.experiments.reproduce import reproduce

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  os.path.join(os.path.dirname(__file__), "..", "configs", "small.py"),
  "configs/*.py file.",
  lock_config=True,
)
_OUT = flags.DEFINE_string(
  "out",
  None,
  "Output directory (workdirs, reports, claims.md), e.g. "
  "workdirs/small; a committed results/ directory is copied from it.",
)
_POOLINGS = flags.DEFINE_list("poolings", ["sequence_mean", "causal_mean"], "Router poolings.")
flags.mark_flags_as_required(["out"])


def main(argv):
  del argv
  text, timings = reproduce(_CONFIG.value, _OUT.value, _POOLINGS.value)
  print(text)
  print(f"\nTimings: {timings}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
