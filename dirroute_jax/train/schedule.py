"""What the training loop does after a step: evaluate, log, save, stop; decided here, by small
named rules, so the loop reads as its schedule.

  log      every `log_every` steps and at the last step (and when stopping)
  evaluate every `eval_every` steps (0: only at the end, which the loop does itself)
  save     the checkpointer's SavePolicy (train/checkpoint.py: every `checkpoint_every` steps,
           every `checkpoint_every_secs` seconds), and always when stopping
  stop     Ctrl-C or SIGTERM (train/loop.py: _StopFlag) seen by any process

Several processes must act at the same step (each writes its part of a checkpoint), so what
one process alone can see (a signal, its clock) is agreed on, the maximum over processes, at
log steps and every AGREE_EVERY steps: each agreement waits for the device queue, and this is
well inside a preemption's grace period. Steps between agreements neither stop nor save by
time. The decision is made before the loop's blocking fetch of the metrics (during which a
signal may arrive): a stop seen here is always saved; one that arrives later stops the next
step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from dirroute_jax.train.checkpoint import SavePolicy

AGREE_EVERY = 10  # steps between multi-process agreements on a stop or a time-based save


def max_over_processes(value: int) -> int:
  """The largest `value` of all processes, on every process: a save or a stop must happen at
  the same step everywhere (each process writes its part of the checkpoint)."""
  if jax.process_count() == 1:
    return int(value)
  return int(np.max(multihost_utils.process_allgather(np.int32(value))))


@dataclasses.dataclass(frozen=True)
class StepActions:
  """What the loop does after a step, in this order."""

  evaluate: bool = False
  log: bool = False
  save: bool = False
  stop: int = 0  # 0: go on; 1: stop (Ctrl-C); 2: stop, preempted (SIGTERM)

  @property
  def stopping(self) -> bool:
    return self.stop > 0

  @property
  def report(self) -> bool:
    """A metrics row and a progress line: at log steps and with every evaluation."""
    return self.log or self.evaluate

  @property
  def any(self) -> bool:
    """Whether the step's metrics are fetched from the device at all."""
    return self.log or self.evaluate or self.save


@dataclasses.dataclass
class Schedule:
  """`at(step)` -> StepActions. `stop_level`: this process's stop request (0, 1 or 2);
  `agree`: the maximum of an int over processes (max_over_processes; a test may fake it)."""

  steps: int
  log_every: int
  eval_every: int
  save: SavePolicy
  stop_level: Callable[[], int]
  processes: int = 1
  agree: Callable[[int], int] = max_over_processes

  @classmethod
  def from_config(cls, cfg, save: SavePolicy, stop_level: Callable[[], int]) -> Schedule:
    return cls(
      steps=cfg.steps,
      log_every=cfg.log_every,
      eval_every=cfg.eval_every,
      save=save,
      stop_level=stop_level,
      processes=jax.process_count(),
    )

  def log_due(self, step: int) -> bool:
    return step % self.log_every == 0 or step == self.steps

  def eval_due(self, step: int) -> bool:
    return bool(self.eval_every) and step % self.eval_every == 0

  def agrees_at(self, step: int) -> bool:
    """Whether processes agree on stops and time-based saves after `step` (one process: it
    agrees with itself at every step)."""
    return self.processes == 1 or self.log_due(step) or step % AGREE_EVERY == 0

  def at(self, step: int) -> StepActions:
    agree = self.agrees_at(step)
    # Always in this order on every process: each is a collective when several run.
    stop = self.agree(self.stop_level()) if agree else 0
    time_due = bool(self.agree(self.save.time_due())) if agree else False
    return StepActions(
      evaluate=self.eval_due(step),
      log=self.log_due(step) or stop > 0,
      save=self.save.step_due(step) or stop > 0 or time_due,
      stop=stop,
    )
