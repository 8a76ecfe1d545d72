"""launch/reproduce.py (and every launcher that trains) stops with launch/train.py's exit
statuses: a failure of train() is one line with its status, an interrupted run stops before
the analyses instead of analysing a half-trained model."""

import os
import signal
import subprocess
import sys

import pytest

from dirroute_jax import cli, exit_codes
from dirroute_jax.config import ConfigError
from dirroute_jax.train import checkpoint, lock, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  "error, code",
  [
    (loop.Diverged("loss is nan at step 7"), exit_codes.DIVERGED),
    (lock.WorkdirBusyError("held by pid 1"), exit_codes.BUSY),
    (checkpoint.CheckpointError("every checkpoint is corrupt"), exit_codes.IO_ERROR),
    (ConfigError("steps must be positive"), exit_codes.USAGE),
    (FileNotFoundError(2, "No such file or directory", "/x/y"), exit_codes.IO_ERROR),
  ],
)
def test_train_errors_exit_with_their_status_in_one_line(error, code, capsys):
  with pytest.raises(SystemExit) as exited:
    with cli.exit_on_train_error():
      raise error
  assert exited.value.code == code
  err = capsys.readouterr().err
  assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
  assert (str(error) if not isinstance(error, OSError) else "/x/y") in err


def test_an_unknown_error_stays_a_traceback():
  with pytest.raises(RuntimeError):  # a bug: status CRASH, with its traceback
    with cli.exit_on_train_error():
      raise RuntimeError("bug")


def test_exit_if_stopped(capsys):
  done = loop.RunSummary(last_step=10, interrupted=False, eval_metrics={}, workdir="w")
  cli.exit_if_stopped(done)  # trained to the end: carries on
  for preempted, code in ((True, exit_codes.PREEMPTED), (False, exit_codes.DONE)):
    stopped = loop.RunSummary(
      last_step=3, interrupted=True, eval_metrics={}, workdir="w", preempted=preempted
    )
    with pytest.raises(SystemExit) as exited:
      cli.exit_if_stopped(stopped, skipped="claims.md")
    assert exited.value.code == code
    assert "rerun the same command" in capsys.readouterr().out


def _cmd(out, cache, *overrides):
  return [
    sys.executable,
    os.path.join(REPO, "launch", "reproduce.py"),
    f"--out={out}",
    "--config=" + os.path.join(REPO, "configs", "tiny.py"),
    f"--config.data.cache_dir={cache}",
    "--config.data.tokenizer=bytes",
    "--config.seq_len=32",
    "--config.batch_size=8",
    "--config.eval_batches=2",
    *overrides,
  ]


_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def test_busy_workdir_is_one_line_with_its_status(tmp_path):
  workdir = tmp_path / "out" / "sequence_mean" / "workdir"
  workdir.mkdir(parents=True)
  with lock.WorkdirLock(str(workdir)):  # this live process holds it
    proc = subprocess.run(
      _cmd(tmp_path / "out", tmp_path / "cache", "--config.steps=2"),
      capture_output=True,
      text=True,
      env=_ENV,
      timeout=300,
    )
  assert proc.returncode == exit_codes.BUSY, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
  assert not (tmp_path / "out" / "claims.md").exists()


@pytest.mark.slow
def test_sigterm_saves_and_stops_before_the_analyses(tmp_path):
  out = tmp_path / "out"
  proc = subprocess.Popen(
    _cmd(
      out,
      tmp_path / "cache",
      "--config.steps=100000",
      "--config.log_every=1",
      "--config.eval_every=0",
      "--config.checkpoint_every=0",
    ),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=_ENV,
  )
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("step "):
      break
  proc.send_signal(signal.SIGTERM)
  text = "".join(lines) + proc.communicate(timeout=300)[0]
  assert proc.returncode == exit_codes.PREEMPTED, text
  assert "Traceback" not in text and "Not done yet: the sequence_mean report" in text
  workdir = out / "sequence_mean" / "workdir"
  assert checkpoint.CheckpointReader(str(workdir)).latest_step() is not None
  assert not (out / "sequence_mean" / "report").exists()
  assert not (out / "causal_mean").exists() and not (out / "claims.md").exists()
