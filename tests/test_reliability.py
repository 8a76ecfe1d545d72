"""The workdir's guards without training: the writer lease, resume config comparison,
metrics.jsonl damage, data-file errors that name file and line, the gs:// tokenizer path,
and one-line errors (with their exit codes) from the launchers. End-to-end runs (SIGTERM,
two writers, divergence) are in test_train_loop.py."""

import json
import os
import socket
import struct
import subprocess
import sys
import time

import pytest

from dirroute_jax import exit_codes
from dirroute_jax import workdir as workdir_lib
from dirroute_jax.data import sources, tokenizers
from dirroute_jax.train import checkpoint, lock, metrics
from dirroute_jax.train.loop import config_changes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


# --- one writer per workdir ------------------------------------------------------------------


def test_second_writer_is_refused_naming_the_first(tmp_path):
  with lock.WorkdirLock(tmp_path):
    held = json.loads((tmp_path / workdir_lib.WRITER_LOCK).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    with pytest.raises(lock.WorkdirBusyError, match=f"pid {os.getpid()} on host"):
      lock.WorkdirLock(tmp_path).acquire()
  assert not (tmp_path / workdir_lib.WRITER_LOCK).exists()  # released on exit
  with lock.WorkdirLock(tmp_path):  # and free again
    pass


def _stale(tmp_path, **record):
  now = time.time()
  (tmp_path / workdir_lib.WRITER_LOCK).write_text(
    json.dumps(
      {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": now,
        "heartbeat": now,
        "id": "other",
        **record,
      }
    )
  )


def test_lease_of_a_dead_process_is_taken_over(tmp_path, capsys):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  _stale(tmp_path, pid=dead.pid)
  with lock.WorkdirLock(tmp_path, settle_secs=0):
    assert json.loads((tmp_path / workdir_lib.WRITER_LOCK).read_text())["pid"] == os.getpid()
  assert f"pid {dead.pid} is not running" in capsys.readouterr().out


def test_lease_from_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path):
  _stale(tmp_path, host="other-host", pid=1, heartbeat=time.time() - 10)
  with pytest.raises(lock.WorkdirBusyError, match="other-host"):
    lock.WorkdirLock(tmp_path, stale_secs=60).acquire()
  _stale(tmp_path, host="other-host", pid=1, heartbeat=time.time() - 120)
  with lock.WorkdirLock(tmp_path, stale_secs=60, settle_secs=0):
    pass


def test_heartbeat_notices_a_lost_lease(tmp_path):
  with lock.WorkdirLock(tmp_path, heartbeat_secs=0.05) as held:
    _stale(tmp_path, host="thief", pid=1)
    time.sleep(0.3)
    with pytest.raises(lock.WorkdirBusyError, match="took over"):
      held.check()


# --- resume compares configs -----------------------------------------------------------------


def _cfg_json(tiny_cfg, **overrides):
  cfg = json.loads(json.dumps(checkpoint.config_to_json(tiny_cfg)))
  for key, value in overrides.items():
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


@pytest.mark.parametrize(
  "key, value",
  [
    ("model.pooling", "sequence_mean"),
    ("data.tokenizer", "bytes"),
    ("seed", 7),
    ("optim.peak_lr", 1.0),
    ("model.d_model", 32),
    ("data.source", "synthetic"),
    ("models", "routed"),
    ("batch_size", 4),
  ],
)
def test_resume_changes_that_alter_the_run_are_named(tiny_cfg, key, value):
  saved = _cfg_json(tiny_cfg)
  meaning, _ = config_changes(saved, _cfg_json(tiny_cfg, **{key: value}))
  assert len(meaning) == 1 and meaning[0].startswith(f"{key}: ")


def test_resume_may_change_length_intervals_and_layout(tiny_cfg):
  saved = _cfg_json(tiny_cfg)
  meaning, allowed = config_changes(
    saved,
    _cfg_json(
      tiny_cfg,
      steps=900,
      log_every=1,
      eval_every=7,
      checkpoint_every=3,
      **{"mesh.preset": "fsdp", "data.cache_dir": "/elsewhere", "checkpoint.keep": 9},
    ),
  )
  assert meaning == [] and len(allowed) == 7


def test_keys_added_since_the_checkpoint_compare_as_defaults(tiny_cfg):
  saved = _cfg_json(tiny_cfg)
  del saved["model"]["norm"]  # a checkpoint older than the key: it trained with the default
  assert config_changes(saved, _cfg_json(tiny_cfg)) == ([], [])
  meaning, _ = config_changes(saved, _cfg_json(tiny_cfg, **{"model.norm": "none"}))
  assert meaning == ["model.norm: 'rms' -> 'none'"]


# --- metrics.jsonl ---------------------------------------------------------------------------


def test_truncated_last_metrics_line_is_dropped(tmp_path, capsys):
  path = tmp_path / workdir_lib.METRICS
  path.write_text('{"step": 5, "routed/loss": 3.0}\n{"step": 10, "routed/lo')
  writer = metrics.MetricsWriter(str(tmp_path), resume_step=10)
  writer.close()
  assert path.read_text() == '{"step": 5, "routed/loss": 3.0}\n'
  assert f"{path}:2" in capsys.readouterr().out


def test_damaged_metrics_line_before_the_last_names_file_and_line(tmp_path):
  path = tmp_path / workdir_lib.METRICS
  path.write_text('{"step": 5}\n{"step": 10, "x\n{"step": 15}\n')
  with pytest.raises(metrics.MetricsFileError, match=f"{path}:2 is damaged"):
    metrics.MetricsWriter(str(tmp_path), resume_step=15)


def test_one_row_per_step(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path))
  writer.write(10, {"routed/loss": 2.0})
  writer.write(10, {"eval/routed/loss": 2.5})
  writer.close()
  rows = metrics.read_rows(tmp_path / workdir_lib.METRICS)
  assert rows == [{"step": 10, "routed/loss": 2.0, "eval/routed/loss": 2.5}]


def _events(path):
  """Event protos of a TensorBoard file (TFRecord framing: length, crc, data, crc)."""
  from tensorboardX.proto import event_pb2

  data, out, i = path.read_bytes(), [], 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i : i + 8])
    out.append(event_pb2.Event.FromString(data[i + 12 : i + 12 + n]))
    i += 12 + n + 4
  return out


def test_resume_tells_tensorboard_to_drop_later_events(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path))
  for step in (5, 10, 15):
    writer.write(step, {"routed/loss": 1.0})
  writer.close()
  time.sleep(1.1)  # event files are named by the second
  metrics.MetricsWriter(str(tmp_path), resume_step=10).close()
  newest = max((tmp_path / workdir_lib.TENSORBOARD).iterdir(), key=lambda p: p.name)
  starts = [
    e.step
    for e in _events(newest)
    if e.HasField("session_log") and e.session_log.status == e.session_log.START
  ]
  assert starts == [11]


# --- data files: errors name the file and line -----------------------------------------------


@pytest.mark.parametrize(
  "line, says",
  [
    (b"5", "is a JSON int, not an object"),
    (b'{"text": null}', "field 'text' is null, not a string"),
    (b'{"text": "a\xff\xfeb"}', "is not valid UTF-8"),
    (b'{"text": "unterminated', "is not valid JSON"),
  ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, says):
  path = tmp_path / "docs.jsonl"
  # Long valid lines first: a decoder reading ahead in chunks would name the wrong line.
  path.write_bytes(
    b"".join(json.dumps({"text": "x" * 5000}).encode() + b"\n" for _ in range(3)) + line + b"\n"
  )
  corpus = sources.files_corpus(str(path), "text", 0.0)
  with pytest.raises(ValueError, match=f"{path}:4"):
    try:
      list(corpus.iter_docs())
    except ValueError as e:
      assert says in str(e), e
      raise


# --- the bpe tokenizer of a gs:// workdir ----------------------------------------------------


def test_bpe_tokenizer_of_a_remote_workdir_goes_through_epath(tmp_path, monkeypatch):
  from etils import epath

  written = {}
  real_path = epath.Path

  class FakeRemote(type(real_path("/"))):
    def write_text(self, text, *a, **k):
      written[str(self)] = text

    def mkdir(self, *a, **k):
      pass

  monkeypatch.setattr(epath, "Path", lambda p: FakeRemote(p) if "://" in str(p) else real_path(p))
  monkeypatch.chdir(tmp_path)
  tok = tokenizers.BPETokenizer.train(["hello world " * 50, "routing directions"] * 5, 300)
  tokenizers.save_to_workdir(tok, "gs://bucket/run")
  assert list(written) and all(k.endswith("bucket/run/tokenizer.json") for k in written)
  assert not list(tmp_path.iterdir())  # no local ./gs:/ folder


# --- launchers: one line, the right status ---------------------------------------------------


def _launch(name, *args):
  return subprocess.run(
    [sys.executable, os.path.join(REPO, "launch", f"{name}.py"), *args],
    capture_output=True,
    text=True,
    env=ENV,
    cwd=REPO,
  )


@pytest.mark.slow
def test_train_config_file_errors_are_one_line(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def get_config(:\n")
  for config, says in (("configs/missing.py", "does not exist"), (str(bad), f"{bad}:1")):
    proc = _launch("train", f"--config={config}", f"--workdir={tmp_path}/w")
    assert proc.returncode == exit_codes.USAGE, proc.stderr
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_mistyped_config_key_prints_plain_text(tmp_path):
  proc = _launch(
    "train",
    "--config=configs/tiny.py",
    f"--workdir={tmp_path}/w",
    "--config.model.poolng=causal_mean",
  )
  assert proc.returncode == exit_codes.USAGE
  assert "'poolng'" in proc.stderr and 'Did you mean "pooling"' in proc.stderr
  assert "\\'" not in proc.stderr and "\\n" not in proc.stderr


def test_audit_of_a_missing_workdir_is_not_a_leak(tmp_path):
  proc = _launch("audit", f"--workdir={tmp_path}/nothing")
  assert proc.returncode == exit_codes.USAGE != 1  # 1 means LEAK
  assert "nothing" in proc.stderr and "Traceback" not in proc.stderr


def test_interpret_checks_out_before_loading_or_analysing(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  # The workdir does not exist either: the --out check must come first.
  proc = _launch("interpret", f"--workdir={tmp_path}/nothing", f"--out={blocker}/report")
  assert proc.returncode == exit_codes.USAGE
  assert "cannot write the report" in proc.stderr and "Traceback" not in proc.stderr


def test_unreadable_lease_is_replaced(tmp_path, capsys):
  (tmp_path / workdir_lib.WRITER_LOCK).write_text('{"host": "x", "pi')  # a crash mid-write
  with lock.WorkdirLock(tmp_path, settle_secs=0):
    assert json.loads((tmp_path / workdir_lib.WRITER_LOCK).read_text())["pid"] == os.getpid()
  assert "unreadable lease" in capsys.readouterr().out


# --- a restarted run recognises its own lease (issue 22) --------------------------------------


def test_a_restarted_process_with_the_same_pid_takes_over_its_old_lease(tmp_path, capsys):
  # A container's trainer is pid 1 every time: after kill -9 and a restart the pid is alive
  # again, but it is another process (another start time).
  me = lock._identity()
  if me["proc_start"] is None:
    pytest.skip("needs /proc")
  _stale(tmp_path, **{**me, "proc_start": str(int(me["proc_start"]) - 100)})
  with lock.WorkdirLock(tmp_path, settle_secs=0):
    assert json.loads((tmp_path / workdir_lib.WRITER_LOCK).read_text())["id"] != "other"
  assert "now another process" in capsys.readouterr().out


def test_the_live_holder_itself_is_still_busy(tmp_path):
  _stale(tmp_path, **lock._identity())
  with pytest.raises(lock.WorkdirBusyError, match=f"pid {os.getpid()} on host"):
    lock.WorkdirLock(tmp_path, settle_secs=0).acquire()


def test_a_lease_from_before_a_reboot_is_stale(tmp_path):
  _stale(tmp_path, **{**lock._identity(), "boot_id": "another-boot"})
  with lock.WorkdirLock(tmp_path, settle_secs=0):
    pass


def _other_namespace_lease(tmp_path, heartbeat):
  _stale(
    tmp_path,
    pid=1,
    pid_ns="4026531999",
    heartbeat_secs=0.2,
    heartbeat=heartbeat,
    boot_id=lock._identity()["boot_id"],
  )


def test_a_dead_lease_of_another_container_on_this_host_is_taken_over(tmp_path):
  # pid 1 of a previous container: not checkable from here; its heartbeat stopped.
  _other_namespace_lease(tmp_path, time.time())
  t0 = time.time()
  with lock.WorkdirLock(tmp_path, settle_secs=0):
    pass
  assert time.time() - t0 < 5


def test_a_live_lease_of_another_container_on_this_host_is_busy(tmp_path):
  import threading

  stop = threading.Event()

  def beat():
    while not stop.wait(0.05):
      _other_namespace_lease(tmp_path, time.time())

  _other_namespace_lease(tmp_path, time.time())
  thread = threading.Thread(target=beat)
  thread.start()
  try:
    with pytest.raises(lock.WorkdirBusyError, match="pid 1 on host"):
      lock.WorkdirLock(tmp_path, settle_secs=0).acquire()
  finally:
    stop.set()
    thread.join()


# --- signals (issue 22) -----------------------------------------------------------------------

_SIGNALS = """
import os, signal, sys, time
from dirroute_jax.train import signals
signals.install_early()
if sys.argv[1] == "early":
  os.kill(os.getpid(), signal.SIGTERM)  # before the loop's handler exists
if sys.argv[1] == "early_ctrl_c":
  os.kill(os.getpid(), signal.SIGINT)  # was swallowed during start-up: trained to the end
from dirroute_jax.train.loop import _StopFlag
with _StopFlag() as stop:
  if sys.argv[1] == "twice":
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
  print("LEVEL", stop.level, flush=True)
"""


@pytest.mark.parametrize("when, level", [("twice", 2), ("early", 2), ("early_ctrl_c", 1)])
def test_sigterm_twice_or_before_the_handler_still_saves_and_preempts(when, level):
  proc = subprocess.run(
    [sys.executable, "-c", _SIGNALS, when], capture_output=True, text=True, env=ENV, timeout=120
  )
  assert proc.returncode == 0 and f"LEVEL {level}" in proc.stdout, proc.stdout + proc.stderr[-2000:]
  assert "aborted" not in proc.stdout


# --- output nobody reads (issue 22) -----------------------------------------------------------


def test_a_closed_stdout_does_not_end_the_process():
  script = (
    "import sys\nfrom dirroute_jax import cli\ncli.tolerate_closed_output()\n"
    "for i in range(20000):\n  print('progress line', i, flush=True)\n"
    "open(sys.argv[1], 'w').write('done')\n"
  )
  r, w = os.pipe()
  os.close(r)  # `| head` that has exited
  marker = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"closed_stdout_{os.getpid()}")
  proc = subprocess.run(
    [sys.executable, "-c", script, marker],
    stdout=w,
    stderr=subprocess.PIPE,
    text=True,
    env=ENV,
    timeout=120,
  )
  os.close(w)
  assert proc.returncode == 0, proc.stderr
  assert open(marker).read() == "done" and "Traceback" not in proc.stderr
  os.unlink(marker)


# --- config files that raise (issue 22) -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
  "body, says",
  [
    ("import no_such_module_here\n", "ModuleNotFoundError"),
    ("def get_config():\n  return undefined_name\n", "NameError"),
    ("def get_config():\n  return 1 / 0\n", "ZeroDivisionError"),
    ("raise RuntimeError('broken')\n", "RuntimeError: broken"),
  ],
)
def test_a_config_file_that_raises_is_one_line(tmp_path, body, says):
  bad = tmp_path / "raises.py"
  bad.write_text(body)
  proc = _launch("train", f"--config={bad}", f"--workdir={tmp_path}/w")
  assert proc.returncode == exit_codes.USAGE, proc.stderr
  assert says in proc.stderr and str(bad) in proc.stderr, proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  proc = _launch(
    "tpu",
    "--name=x",
    "--zone=z",
    "--accelerator_type=v4-8",
    "--workdir=gs://b/w",
    f"--config={bad}",
    "--dry_run",
  )
  assert proc.returncode == exit_codes.USAGE and says in proc.stderr, proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# --- damaged files of a workdir are named (issue 22) ------------------------------------------


def test_a_latin1_txt_file_is_an_error_naming_file_and_line(tmp_path):
  path = tmp_path / "book.txt"
  path.write_bytes("first line\nna\xefve caf\xe9\n".encode("latin-1"))
  corpus = sources.files_corpus(str(path), "text", 0.0)
  with pytest.raises(ValueError, match=f"{path}:2 is not valid UTF-8"):
    list(corpus.iter_docs())


def test_a_damaged_tokenizer_json_is_named(tmp_path, tiny_cfg):
  (tmp_path / workdir_lib.TOKENIZER).write_bytes(b"\x00garbage")
  tiny_cfg.data.tokenizer = "bpe"
  with pytest.raises(ValueError, match=f"{tmp_path / workdir_lib.TOKENIZER} is damaged"):
    tokenizers.load_from_workdir(tiny_cfg, str(tmp_path))


@pytest.mark.parametrize("content", [b"\xff\xfe\x00junk", b"not json", b"[1, 2]"])
def test_a_damaged_data_fingerprint_is_named_not_raised(tmp_path, content):
  (tmp_path / workdir_lib.DATA_FINGERPRINT).write_bytes(content)
  record, why = workdir_lib.read_data_fingerprint(tmp_path)
  assert record is None and f"{tmp_path / workdir_lib.DATA_FINGERPRINT} is damaged" in why


@pytest.mark.slow
def test_sample_and_interpret_give_one_line_for_unreadable_checkpoints(tmp_path, tiny_cfg):
  import jax.numpy as jnp

  with checkpoint.Checkpointer(tmp_path, async_save=False) as ckpt:
    ckpt.save(1, {"step": jnp.int32(1), "w": jnp.ones(3)}, config=tiny_cfg)
  (tmp_path / workdir_lib.CHECKPOINTS / "1" / "state" / "_METADATA").write_text("")
  for launcher, extra in (("sample", "--prompt=a"), ("interpret", f"--out={tmp_path}/r")):
    proc = _launch(launcher, f"--workdir={tmp_path}", extra)
    assert proc.returncode == exit_codes.USAGE, proc.stderr
    assert "Traceback" not in proc.stderr and "no usable checkpoint" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: "), proc.stderr
    assert "moved to" not in proc.stdout + proc.stderr


def test_an_os_error_without_a_file_names_the_workdir(capsys):
  import errno

  from dirroute_jax import cli

  with pytest.raises(SystemExit) as e:
    with cli.exit_on_train_error("/runs/full"):
      raise OSError(errno.ENOSPC, "No space left on device")
  assert e.value.code == exit_codes.IO_ERROR
  err = capsys.readouterr().err
  assert "No space left on device while writing under --workdir=/runs/full" in err


def test_unfinished_orbax_coroutines_are_not_reported_one_by_one():
  import types

  from dirroute_jax import cli

  seen = []
  hook = cli._unraisable(seen.append)
  namespace = {}
  exec(
    compile(
      "async def read():\n  pass\n",
      os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "read.py"),
      "exec",
    ),
    namespace,
  )
  coro = namespace["read"]()
  hook(
    types.SimpleNamespace(exc_value=RuntimeError("coroutine ignored GeneratorExit"), object=coro)
  )
  coro.close()
  ours = _ours()
  hook(types.SimpleNamespace(exc_value=RuntimeError("ours"), object=ours))
  ours.close()
  assert [str(i.exc_value) for i in seen] == ["ours"]


async def _ours_coroutine():
  pass


def _ours():
  return _ours_coroutine()


def test_a_library_coroutine_never_started_leaves_the_error_last():
  """CI saw it after a failed save: an orbax write coroutine created but never awaited is
  collected at exit and warned about (two lines) after the one-line error."""
  script = """if 1:
    import sys
    from dirroute_jax import cli
    cli.parse_flags(["train.py"])
    async def write():
      pass
    pending = write()  # collected at interpreter exit, never awaited
    with cli.exit_on_train_error("/runs/full"):
      raise OSError(28, "No space left on device")
  """
  proc = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    cwd=REPO,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == exit_codes.IO_ERROR, proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: No space left"), proc.stderr


def test_another_runs_valid_tokenizer_is_warned_about(tmp_path, tiny_cfg, caplog):
  import logging as std_logging

  from dirroute_jax.analysis.load import Workdir

  tok = tokenizers.BPETokenizer.train(["hello world " * 50, "routing directions"] * 5, 300)
  tok.save(str(tmp_path / workdir_lib.TOKENIZER))
  (tmp_path / workdir_lib.DATA_FINGERPRINT).write_text(json.dumps({"tokenizer": "bpe-2048-x"}))
  tiny_cfg.data.tokenizer = "bpe"
  run = Workdir(path=str(tmp_path), step=1, cfg=tiny_cfg, models={}, params={})
  with caplog.at_level(std_logging.WARNING):
    assert run.tokenizer.fingerprint == tok.fingerprint
  assert any("not the one the run trained with" in r.getMessage() for r in caplog.records)
