"""End to end through launch/train.py: losses fall, SIGKILL + rerun resumes bitwise, Ctrl-C
saves, NaN stops without touching the last good checkpoint, bad input is a clear error."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dirroute_jax.train import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


def _cmd(workdir, cache, *overrides):
  return [sys.executable, os.path.join(REPO, "launch", "train.py"),
          "--config=" + os.path.join(REPO, "configs", "tiny.py"), f"--workdir={workdir}",
          f"--compilation_cache={cache}/xla", f"--config.data.cache_dir={cache}",
          "--config.data.tokenizer=bytes", "--config.seq_len=32", "--config.batch_size=8",
          "--config.eval_batches=2", *overrides]


def _run(workdir, cache, *overrides, check=True):
  proc = subprocess.run(_cmd(workdir, cache, *overrides), capture_output=True, text=True,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  if check:
    assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc


def _metrics(workdir):
  return {row["step"]: row for row in map(json.loads, open(os.path.join(workdir,
                                                                        "metrics.jsonl")))}


def _final_state(workdir):
  ckpt = checkpoint.Checkpointer(str(workdir), read_only=True)
  step = ckpt.latest_step()
  path = os.path.join(str(workdir), "checkpoints", str(step), "state")
  import orbax.checkpoint as ocp
  return step, ocp.StandardCheckpointer().restore(path)


RUN = ("--config.steps=120", "--config.checkpoint_every=10", "--config.log_every=5",
       "--config.eval_every=60")


def test_losses_fall_and_sigkill_resume_is_bitwise(tmp_path, cache):
  straight = tmp_path / "straight"
  out = _run(straight, cache, *RUN).stdout
  assert "Held-out perplexity" in out and "routed" in out and "baseline" in out
  m = _metrics(straight)
  for name in ("routed", "baseline"):
    assert m[120][f"{name}/loss"] < m[5][f"{name}/loss"] - 0.5
    assert f"eval/{name}/perplexity" in m[120]
  assert set(m[60]) >= {"step", "routed/loss", "baseline/loss", "eval/routed/loss",
                        "delta/loss", "routed/router/mean", "perf/tokens_per_sec"}

  crashed = tmp_path / "crashed"
  proc = subprocess.Popen(_cmd(crashed, cache, *RUN), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  deadline = time.time() + 120
  while not (crashed / "checkpoints" / "20").exists():
    assert proc.poll() is None and time.time() < deadline, "run ended before a checkpoint"
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = checkpoint.Checkpointer(str(crashed), read_only=True).latest_step()
  assert killed_at is not None and killed_at < 120
  out = _run(crashed, cache, *RUN).stdout
  assert f"Resumed from step {killed_at}" in out

  step_a, state_a = _final_state(straight)
  step_b, state_b = _final_state(crashed)
  assert step_a == step_b == 120
  for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
    np.testing.assert_array_equal(a, b)
  m_b = _metrics(crashed)
  assert sorted(m_b) == sorted(m)  # no duplicated or missing lines across the crash
  for s in m:
    if s > killed_at:
      assert m_b[s]["routed/loss"] == m[s]["routed/loss"]
      assert m_b[s]["baseline/loss"] == m[s]["baseline/loss"]


def test_ctrl_c_saves_and_exits_cleanly(tmp_path, cache):
  wd = tmp_path / "interrupted"
  proc = subprocess.Popen(_cmd(wd, cache, "--config.steps=100000", "--config.log_every=1000",
                               "--config.checkpoint_every=0", "--config.eval_every=0"),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""})
  for line in proc.stdout:
    if line.startswith("Training routed"):
      break
  time.sleep(3)
  proc.send_signal(signal.SIGINT)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out
  assert "Stopped at step" in out
  step = checkpoint.Checkpointer(str(wd), read_only=True).latest_step()
  assert step is not None and 0 < step < 100000


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, cache):
  wd = tmp_path / "nan"
  proc = _run(wd, cache, "--config.steps=20", "--config.checkpoint_every=1",
              "--config.log_every=1", "--config.optim.warmup_steps=0",
              "--config.optim.peak_lr=1e30", "--config.optim.final_lr=1e30", check=False)
  assert proc.returncode == 2
  assert "non-finite" in proc.stderr and "intact" in proc.stderr
  ckpt = checkpoint.Checkpointer(str(wd), read_only=True)
  step, state = _final_state(wd)
  assert step == ckpt.latest_step() >= 1
  for leaf in jax.tree.leaves(state):
    assert np.all(np.isfinite(leaf))


@pytest.mark.parametrize("overrides,message", [
    (("--config.data.tokenizer=gpt2",), "vocab"),
    (("--config.batch_size=0",), "batch_size"),
    (("--config.model.pooling=mean",), "model.pooling"),
    (("--config.data.source=files", "--config.data.files=/nonexistent/*.parquet"),
     "/nonexistent"),
    (("--config.no_such_key=1",), "no_such_key"),
])
def test_bad_input_is_a_clear_error(tmp_path, cache, overrides, message):
  proc = _run(tmp_path / "bad", cache, "--config.steps=2", *overrides, check=False)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr


def test_unwritable_workdir_and_mismatched_checkpoint(tmp_path, cache):
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = _run(blocker / "workdir", cache, "--config.steps=2", check=False)
  assert proc.returncode == 2 and "cannot write" in proc.stderr
  wd = tmp_path / "shapes"
  _run(wd, cache, "--config.steps=2", "--config.checkpoint_every=2")
  proc = _run(wd, cache, "--config.steps=4", "--config.model.d_model=32", check=False)
  assert proc.returncode == 2 and "different config" in proc.stderr, proc.stderr
