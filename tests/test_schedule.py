"""The training schedule's rules, one at a time, without training (train/schedule.py)."""

import time

from dirroute_jax.train import schedule as schedule_lib
from dirroute_jax.train.checkpoint import SavePolicy


def _schedule(stop=0, processes=1, agreed=None, **save):
  calls = []

  def agree(value):
    calls.append(int(value))
    return int(value) if agreed is None else agreed

  s = schedule_lib.Schedule(
    steps=100,
    log_every=25,
    eval_every=40,
    save=SavePolicy(**save),
    stop_level=lambda: stop,
    processes=processes,
    agree=agree,
  )
  return s, calls


def test_log_eval_and_step_saves():
  s, _ = _schedule(every_steps=30)
  assert s.at(1) == schedule_lib.StepActions()
  assert s.at(25) == schedule_lib.StepActions(log=True)
  assert s.at(40) == schedule_lib.StepActions(evaluate=True)
  assert s.at(30) == schedule_lib.StepActions(save=True)
  assert s.at(100).log  # the last step always logs
  assert not s.at(1).any and s.at(40).report and not s.at(30).report


def test_a_stop_logs_and_saves():
  s, _ = _schedule(stop=2)
  act = s.at(7)
  assert act.stopping and act.stop == 2 and act.log and act.save


def test_time_based_saves_count_from_the_last_save():
  s, _ = _schedule(every_secs=3600)
  assert not s.at(1).save
  s.save.last_save = time.time() - 3601
  assert s.at(2).save
  s.save.restart_clock()
  assert not s.at(3).save


def test_several_processes_agree_only_every_few_steps_and_on_log_steps():
  s, calls = _schedule(stop=1, processes=2)
  assert not s.at(3).stopping and calls == []  # no agreement: nothing seen, nothing waited for
  assert s.at(schedule_lib.AGREE_EVERY).stopping and calls == [1, 0]  # stop, then time
  calls.clear()
  assert s.at(25).stopping and calls == [1, 0]


def test_what_another_process_saw_counts():
  s, _ = _schedule(processes=2, agreed=1)  # here no signal, elsewhere one
  assert s.at(schedule_lib.AGREE_EVERY).stopping
