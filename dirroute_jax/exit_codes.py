"""Exit statuses of launch/train.py, read by launch/tpu.py, launch/slurm.py and any scheduler.
launch/reproduce.py and launch/seeds.py exit with the same ones (cli.exit_on_train_error maps
train()'s exceptions to them for all three).

One table so a launcher can decide what to do without parsing output: only PREEMPTED means
"run the same command again"; every other failure repeats itself if retried.

  code  name          meaning                                                   retry?
  0     DONE          trained to `steps`, or stopped by Ctrl-C after a save     no
  1     CRASH         an unexpected exception (Python's own status; a bug)      no
  2     USAGE         bad flag, config file or override, or a resume whose      no
                      config differs from the checkpoint's
  3     DIVERGED      a loss or the state became non-finite                     no
  4     IO_ERROR      checkpoint or workdir unreadable/unwritable (disk full,   no
                      a read-only workdir, every checkpoint corrupt, ...)
  5     BUSY          another process is writing to the same workdir; after a  no (wait)
                      preemption or a dropped connection the launchers wait
                      for that lease, then rerun
  75    PREEMPTED     SIGTERM (once or more, also during start-up): a           yes
                      checkpoint was saved at the next step (or nothing was
                      trained yet), rerun the same command to resume
                      (75 = EX_TEMPFAIL)
  130   ABORTED       a second Ctrl-C: stopped at once without saving           no

launch/audit.py uses its own two: 1 = a model LEAKs, USAGE = it could not run.

What the launchers do with each status is `LAUNCHER_ACTION` below (the last column of README's
table; tests/test_launchers.py checks that the table, this module and both launchers agree).
"""

from __future__ import annotations

DONE = 0
CRASH = 1
USAGE = 2
DIVERGED = 3
IO_ERROR = 4
BUSY = 5
PREEMPTED = 75
ABORTED = 130

NAMES = {
  DONE: "DONE",
  CRASH: "CRASH",
  USAGE: "USAGE",
  DIVERGED: "DIVERGED",
  IO_ERROR: "IO_ERROR",
  BUSY: "BUSY",
  PREEMPTED: "PREEMPTED",
  ABORTED: "ABORTED",
}


def describe(code: int) -> str:
  """'75 (PREEMPTED)' for a log line; unknown codes (a killed process: 137, ssh: 255) as is."""
  return f"{code} ({NAMES[code]})" if code in NAMES else str(code)


# Statuses after which the same command is rerun at once (launch/tpu.py) or the job requeued
# (launch/slurm.py's script): the run saved and resumes from its checkpoint.
RERUN = (PREEMPTED,)
# Rerun only when the previous attempt was preempted or lost its connection: the lease of the
# run that vanished (or may still be running) is waited for first. A first attempt that finds
# the workdir busy stops.
RERUN_AFTER_PREEMPTION = (BUSY,)

# README's Reliability table, last column: what launch/tpu.py and launch/slurm.py do.
LAUNCHER_ACTION = {
  DONE: "done",
  CRASH: "stop",
  USAGE: "stop",
  DIVERGED: "stop",
  IO_ERROR: "stop",
  BUSY: "stop; after a preemption or a dropped connection: wait for the lease, rerun",
  PREEMPTED: "rerun / requeue",
  ABORTED: "stop",
}
