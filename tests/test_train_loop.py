"""End to end through launch/train.py: losses fall, SIGKILL + rerun resumes bitwise, Ctrl-C
saves, NaN stops without touching the last good checkpoint, bad input is a clear error."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dirroute_jax import exit_codes
from dirroute_jax import workdir as workdir_lib
from dirroute_jax.train import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


def _cmd(workdir, cache, *overrides):
  return [
    sys.executable,
    os.path.join(REPO, "launch", "train.py"),
    "--config=" + os.path.join(REPO, "configs", "tiny.py"),
    f"--workdir={workdir}",
    f"--compilation_cache={cache}/xla",
    f"--config.data.cache_dir={cache}",
    "--config.data.tokenizer=bytes",
    "--config.seq_len=32",
    "--config.batch_size=8",
    "--config.eval_batches=2",
    *overrides,
  ]


def _run(workdir, cache, *overrides, check=True):
  proc = subprocess.run(
    _cmd(workdir, cache, *overrides),
    capture_output=True,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
  )
  if check:
    assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc


def _metrics(workdir):
  return {row["step"]: row for row in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))}


def _final_state(workdir):
  ckpt = checkpoint.CheckpointReader(str(workdir))
  step = ckpt.latest_step()
  path = os.path.join(str(workdir), "checkpoints", str(step), "state")
  import orbax.checkpoint as ocp

  return step, ocp.StandardCheckpointer().restore(path)


RUN = (
  "--config.steps=120",
  "--config.checkpoint_every=10",
  "--config.log_every=5",
  "--config.eval_every=60",
)


@pytest.mark.slow
def test_losses_fall_and_sigkill_resume_is_bitwise(tmp_path, cache):
  straight = tmp_path / "straight"
  out = _run(straight, cache, *RUN).stdout
  assert "Held-out perplexity" in out and "routed" in out and "baseline" in out
  m = _metrics(straight)
  for name in ("routed", "baseline"):
    assert m[120][f"{name}/loss"] < m[5][f"{name}/loss"] - 0.5
    assert f"eval/{name}/perplexity" in m[120]
  assert set(m[60]) >= {
    "step",
    "routed/loss",
    "baseline/loss",
    "eval/routed/loss",
    "delta/loss",
    "routed/router/mean",
    "perf/tokens_per_sec",
  }

  crashed = tmp_path / "crashed"
  proc = subprocess.Popen(
    _cmd(crashed, cache, *RUN),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
  )
  deadline = time.time() + 120
  while not (crashed / "checkpoints" / "20").exists():
    assert proc.poll() is None and time.time() < deadline, "run ended before a checkpoint"
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = checkpoint.CheckpointReader(str(crashed)).latest_step()
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


@pytest.mark.slow
def test_ctrl_c_saves_and_exits_cleanly(tmp_path, cache):
  wd = tmp_path / "interrupted"
  proc = subprocess.Popen(
    _cmd(
      wd,
      cache,
      "--config.steps=100000",
      "--config.log_every=1000",
      "--config.checkpoint_every=0",
      "--config.eval_every=0",
    ),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
  )
  for line in proc.stdout:
    if line.startswith("Training routed"):
      break
  time.sleep(3)
  proc.send_signal(signal.SIGINT)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, out
  assert "Stopped at step" in out
  step = checkpoint.CheckpointReader(str(wd)).latest_step()
  assert step is not None and 0 < step < 100000


def _all_finite(workdir):
  import orbax.checkpoint as ocp

  for step in checkpoint.CheckpointReader(str(workdir)).all_steps():
    state = ocp.StandardCheckpointer().restore(
      os.path.join(str(workdir), "checkpoints", str(step), "state")
    )
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state)), step


@pytest.mark.slow
def test_a_non_finite_state_is_never_saved(tmp_path, cache):
  # An LR of inf turns 58 of the 183 leaves into inf/NaN in the first update, while the loss
  # of that step (computed before the update) is still finite.
  wd = tmp_path / "inf"
  proc = _run(
    wd,
    cache,
    "--config.steps=20",
    "--config.checkpoint_every=1",
    "--config.log_every=1",
    "--config.optim.warmup_steps=0",
    "--config.optim.peak_lr=inf",
    "--config.optim.final_lr=inf",
    check=False,
  )
  assert proc.returncode == exit_codes.DIVERGED, proc.stderr
  assert "has NaN/Inf in" in proc.stderr and "not saved" in proc.stderr
  assert checkpoint.CheckpointReader(str(wd)).all_steps() == []


@pytest.mark.slow
def test_divergence_keeps_only_checkpoints_that_gave_a_finite_loss(tmp_path, cache):
  """LR 1e9 diverges within a few steps, in one of two ways depending on float rounding (it
  changed between package versions): a finite state whose loss at the next step is NaN, or a
  state that is itself NaN. Either way no checkpoint is left as "the last good one" unless a
  finite loss was computed from it, and a rerun with a sane LR is possible, but only when asked
  for, without touching the workdir before that."""
  wd = tmp_path / "diverged"
  sane = ("--config.steps=8", "--config.checkpoint_every=1", "--config.log_every=1")
  proc = _run(
    wd, cache, *sane, "--config.optim.warmup_steps=3", "--config.optim.peak_lr=1e9", check=False
  )
  assert proc.returncode == exit_codes.DIVERGED, proc.stderr
  loss = re.search(r"non-finite \S+ at step (\d+)", proc.stderr)
  state = re.search(r"the state at step (\d+) has NaN/Inf in", proc.stderr)
  assert bool(loss) != bool(state), proc.stderr
  kept = checkpoint.CheckpointReader(str(wd)).all_steps()
  if loss:  # the step before gave that loss: its checkpoint is moved aside
    bad = int(loss.group(1))
    assert f"Checkpoint(s) [{bad - 1}]" in proc.stderr
    assert kept == list(range(1, bad - 1))
    assert len(list((wd / "diverged_checkpoints").iterdir())) == 1
  else:  # never written; the one before gave a finite loss at this step
    bad = int(state.group(1))
    assert kept == list(range(1, bad)) and "not saved" in proc.stderr
  assert kept and f"newest checkpoint is now step {kept[-1]}" in proc.stderr
  _all_finite(wd)

  before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in wd.iterdir() if p.is_file()}
  proc = _run(wd, cache, *sane, "--config.optim.warmup_steps=3", check=False)
  assert (
    proc.returncode == exit_codes.USAGE
    and "optim.peak_lr: 1000000000.0 -> " in proc.stderr
    and "--allow_config_change" in proc.stderr
  ), proc.stderr
  assert {
    p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in wd.iterdir() if p.is_file()
  } == before  # nothing written before the check

  proc = _run(
    wd, cache, *sane, "--config.optim.warmup_steps=3", "--allow_config_change", check=False
  )
  assert f"Resumed from step {kept[-1]}" in proc.stdout and "changed config" in proc.stdout
  if loss:
    assert proc.returncode == 0 and math.isfinite(_metrics(wd)[8]["routed/loss"])
  else:  # weights blown up by LR 1e9 may overflow again at any LR: refused again, not saved
    assert proc.returncode in (0, exit_codes.DIVERGED), proc.stderr
  _all_finite(wd)


@pytest.mark.parametrize(
  "overrides,message",
  [
    (("--config.data.tokenizer=gpt2",), "vocab"),
    (("--config.batch_size=0",), "batch_size"),
    (("--config.model.pooling=mean",), "model.pooling"),
    (("--config.data.source=files", "--config.data.files=/nonexistent/*.parquet"), "/nonexistent"),
    (("--config.no_such_key=1",), "no_such_key"),
  ],
)
def test_bad_input_is_a_clear_error(tmp_path, cache, overrides, message):
  proc = _run(tmp_path / "bad", cache, "--config.steps=2", *overrides, check=False)
  assert proc.returncode != 0
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_unwritable_workdir_and_mismatched_checkpoint(tmp_path, cache):
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = _run(blocker / "workdir", cache, "--config.steps=2", check=False)
  assert proc.returncode == exit_codes.IO_ERROR and "cannot write" in proc.stderr
  wd = tmp_path / "shapes"
  _run(wd, cache, "--config.steps=2", "--config.checkpoint_every=2")
  proc = _run(wd, cache, "--config.steps=4", "--config.model.d_model=32", check=False)
  assert proc.returncode == exit_codes.USAGE and "different config" in proc.stderr, proc.stderr
  assert "model.d_model: 64 -> 32" in proc.stderr


def _start(workdir, cache, *overrides):
  """A long run in the background, returned once it is training (past compilation)."""
  proc = subprocess.Popen(
    _cmd(workdir, cache, "--config.steps=100000", "--config.eval_every=0", *overrides),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
  )
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith("step "):
      return proc, lines
  raise AssertionError("".join(lines))


@pytest.mark.slow
def test_ctrl_c_with_periodic_checkpoints_saves_the_step_it_reports(tmp_path, cache):
  # log_every=1: the main thread waits in the metrics fetch most of the time, which is where
  # a Ctrl-C used to land after the save had already been decided against.
  wd = tmp_path / "ctrl_c"
  proc, _ = _start(wd, cache, "--config.log_every=1", "--config.checkpoint_every=1000")
  time.sleep(1)
  proc.send_signal(signal.SIGINT)
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == exit_codes.DONE, out
  stopped = int(out.split("Stopped at step ")[1].split(";")[0])
  assert checkpoint.CheckpointReader(str(wd)).latest_step() == stopped


@pytest.mark.slow
def test_second_writer_refused_then_sigterm_saves_and_exits_preempted(tmp_path, cache):
  wd = tmp_path / "shared"
  first, _ = _start(wd, cache, "--config.log_every=1", "--config.checkpoint_every=0")
  second = _run(wd, cache, "--config.steps=100000", "--config.eval_every=0", check=False)
  assert second.returncode == exit_codes.BUSY, second.stderr
  assert f"pid {first.pid} on host" in second.stderr and "Traceback" not in second.stderr
  assert not (wd / "checkpoints" / "1").exists() or first.poll() is None

  first.send_signal(signal.SIGTERM)
  out = first.communicate(timeout=120)[0]
  assert first.returncode == exit_codes.PREEMPTED, out
  stopped = int(out.split("Stopped at step ")[1].split(";")[0])
  assert checkpoint.CheckpointReader(str(wd)).latest_step() == stopped
  assert not (wd / workdir_lib.WRITER_LOCK).exists()  # the lease is released


@pytest.mark.slow
def test_double_ctrl_c_aborts_in_one_line(tmp_path, cache):
  # Bigger steps, so the second Ctrl-C lands while the first is still being honoured.
  proc, lines = _start(
    tmp_path / "abort",
    cache,
    "--config.log_every=1",
    "--config.checkpoint_every=0",
    "--config.batch_size=64",
    "--config.seq_len=128",
  )
  proc.send_signal(signal.SIGINT)
  for line in proc.stdout:  # Python runs the handler once per delivery it sees: wait for it
    lines.append(line)
    if "Interrupted" in line:
      break
  proc.send_signal(signal.SIGINT)
  out = "".join(lines) + proc.communicate(timeout=120)[0]
  assert proc.returncode == exit_codes.ABORTED, out
  after = out[out.index("Interrupted") :]
  assert "Traceback" not in after and len(after.strip().splitlines()) <= 4, after
  assert "aborted without saving" in after
  assert not (tmp_path / "abort" / workdir_lib.WRITER_LOCK).exists()


@pytest.mark.slow
def test_rerun_of_a_finished_or_shortened_run_writes_nothing_new(tmp_path, cache):
  wd = tmp_path / "finished"
  # A time-based interval too short to skip any step: a save after each one.
  _run(
    wd,
    cache,
    "--config.steps=10",
    "--config.checkpoint_every=0",
    "--config.log_every=5",
    "--config.eval_every=0",
    "--config.checkpoint_every_secs=1e-6",
    "--config.checkpoint.keep=20",
  )
  assert checkpoint.CheckpointReader(str(wd)).all_steps() == list(range(1, 11))
  before = (wd / "metrics.jsonl").read_text()
  out = _run(wd, cache, "--config.steps=10").stdout
  assert "Held-out perplexity" in out
  out = _run(wd, cache, "--config.steps=4").stdout
  assert "steps=4 is below the checkpoint's step 10" in out
  assert (wd / "metrics.jsonl").read_text() == before  # no second final row
  out = _run(wd, cache, "--config.steps=15", "--config.log_every=5").stdout
  assert "steps changed 10 -> 15: the cosine learning-rate schedule" in out
  assert sorted(_metrics(wd)) == [5, 10, 15]


def _limit_file_size():
  import resource

  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails like ENOSPC
  resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest.mark.slow
def test_a_failed_save_stops_training_with_one_line(tmp_path, cache):
  """The first checkpoint (~6 MB) cannot be written under a 1 MB file-size limit, as on a
  full disk: training stops at the first logged step after orbax reports the failure, and at
  the latest at the next save (step 20; when the background write fails is up to the machine's
  load), with an I/O status and no traceback."""
  _run(tmp_path / "warm", cache, "--config.steps=1")  # the data cache, written without a limit
  wd = tmp_path / "full"
  proc = subprocess.run(
    _cmd(
      wd,
      cache,
      "--config.steps=40",
      "--config.checkpoint_every=10",
      "--config.log_every=2",
      "--config.eval_every=0",
      "--compilation_cache=",
    ),
    capture_output=True,
    text=True,
    preexec_fn=_limit_file_size,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
  )
  assert proc.returncode == exit_codes.IO_ERROR, proc.stdout + proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert lines[-1].startswith("error: saving checkpoint") and "Traceback" not in proc.stderr
  assert len(lines) <= 6, proc.stderr  # orbax's own one-line log records, then ours
  assert max(_metrics(wd)) <= 20  # never past the next save (was: to step 40, exit 0)
  assert checkpoint.CheckpointReader(str(wd)).all_steps() == []


# --- damaged steps, closed stdout, early signals (issue 22) -----------------------------------

SHORT = ("--config.checkpoint_every=10", "--config.log_every=5", "--config.eval_every=0")


@pytest.mark.slow
def test_damaged_newest_steps_resume_exactly_from_what_is_sound(tmp_path, cache):
  """Against a clean resume of the same run: a data position edited in the newest step, a
  copy of it under a later step number (no commit marker), a garbage data_fingerprint.json;
  and, in another copy, the newest step without its data item. Both continue exactly."""
  import shutil

  clean = tmp_path / "clean"
  _run(clean, cache, "--config.steps=20", *SHORT)
  edited, no_data, from10 = tmp_path / "edited", tmp_path / "no_data", tmp_path / "from10"
  for copy in (edited, no_data, from10):
    shutil.copytree(clean, copy)
  shutil.rmtree(from10 / "checkpoints" / "20")  # no_data's reference: a clean resume from 10
  (edited / "checkpoints" / "20" / "data" / "process_0-of-1.json").write_text('{"next_index": 10}')
  shutil.copytree(edited / "checkpoints" / "20", edited / "checkpoints" / "25")
  (edited / "checkpoints" / "25" / "commit_success.txt").unlink(missing_ok=True)
  (edited / workdir_lib.DATA_FINGERPRINT).write_bytes(b"\xff\x00junk")
  shutil.rmtree(no_data / "checkpoints" / "20" / "data")

  _run(clean, cache, "--config.steps=30", *SHORT)
  out = _run(edited, cache, "--config.steps=30", *SHORT).stdout
  assert "Resumed from step 20" in out and "holds the state of step 20, not 25" in out, out
  assert "does not belong to step 20" in out and "data_fingerprint.json is damaged" in out
  out = _run(no_data, cache, "--config.steps=30", *SHORT).stdout
  assert "Resumed from step 10" in out, out
  _run(from10, cache, "--config.steps=30", *SHORT)
  for wd, ref in ((edited, clean), (no_data, from10)):
    got, want = _metrics(wd), _metrics(ref)
    for s in (25, 30):
      assert got[s]["routed/loss"] == want[s]["routed/loss"], (wd, s)


@pytest.mark.slow
def test_a_closed_stdout_does_not_stop_training(tmp_path, cache):
  wd = tmp_path / "head"
  proc = subprocess.Popen(
    _cmd(
      wd,
      cache,
      "--config.steps=20",
      "--config.log_every=1",
      "--config.checkpoint_every=10",
      "--config.eval_every=0",
    ),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
  )
  for _ in range(3):  # `| head -n 3`
    proc.stdout.readline()
  proc.stdout.close()
  err = proc.stderr.read()
  assert proc.wait(timeout=300) == exit_codes.DONE, err
  assert checkpoint.CheckpointReader(str(wd)).latest_step() == 20


@pytest.mark.slow
def test_sigterm_during_start_up_exits_preempted(tmp_path, cache):
  proc = subprocess.Popen(
    _cmd(tmp_path / "early", cache, "--config.steps=20"),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
  )
  time.sleep(1.0)  # importing; the loop's handler is not installed yet
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=300)[0]
  assert proc.returncode == exit_codes.PREEMPTED, out


def _unshare_works():
  import shutil

  if not shutil.which("unshare"):
    return False
  return (
    subprocess.run(
      ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True
    ).returncode
    == 0
  )


@pytest.mark.slow
@pytest.mark.skipif(not _unshare_works(), reason="needs unshare --pid (root or user namespaces)")
def test_a_restarted_container_takes_back_its_own_workdir(tmp_path, cache):
  """The trainer as pid 1 of its own pid namespace (a container), killed with SIGKILL, then
  started again the same way at once: it must not be refused as 'in use by pid 1'."""
  wd = tmp_path / "container"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  cmd = [
    "unshare",
    "--pid",
    "--fork",
    "--mount-proc",
    *_cmd(
      wd,
      cache,
      "--config.steps=100000",
      "--config.log_every=1",
      *SHORT[:1],
      "--config.eval_every=0",
    ),
  ]
  first = subprocess.Popen(
    cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
  )
  for line in first.stdout:
    if line.startswith("step "):
      break
  holder = json.loads((wd / workdir_lib.WRITER_LOCK).read_text())
  assert holder["pid"] == 1
  children = open(f"/proc/{first.pid}/task/{first.pid}/children").read().split()
  os.kill(int(children[0]), signal.SIGKILL)  # pid 1 of the namespace: the whole container
  first.wait(timeout=60)
  second = subprocess.run(
    ["unshare", "--pid", "--fork", "--mount-proc", *_cmd(wd, cache, "--config.steps=12", *SHORT)],
    capture_output=True,
    text=True,
    env=env,
    timeout=600,
  )
  assert second.returncode == exit_codes.DONE, second.stdout + second.stderr
  # The namespace's inode may be reused (then: pid 1 is another process, by its start time),
  # or not (then: another pid namespace whose heartbeat stopped).
  assert "taking over" in second.stdout, second.stdout
  assert "now another process" in second.stdout or "another pid namespace" in second.stdout
