"""Flag parsing for the thin `launch/*.py` entry points: a bad flag, config file or config
override is a one-line error (exit status exit_codes.USAGE), not a traceback from inside
ml_collections. Also launch/train.py's flags, defined here so launch/tpu.py and launch/slurm.py
can check the flags they forward to it before renting anything, and the exit statuses of every
launcher that trains (train.py, reproduce.py, seeds.py)."""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import sys
import types
import warnings

from absl import flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_flags as _config_flags_impl

from dirroute_jax import exit_codes


def fail(message: str, code: int = exit_codes.USAGE):
  """Prints `error: message` to stderr and exits with `code`."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def int_list(flag: str, values: list[str], example: str) -> list[int]:
  """A list flag's values as integers, or a one-line error naming the flag and an example."""
  try:
    return [int(v) for v in values]
  except ValueError:
    fail(f"--{flag}={','.join(values)}: give integers, e.g. --{flag}={example}.")


def print_outputs(paths: dict[str, str]) -> None:
  """What an experiment launcher ends with: its markdown on stdout, then the files written."""
  with open(paths["markdown"]) as f:
    print(f.read())
  print("Wrote " + ", ".join(paths.values()))


def _train_exit_codes() -> tuple[tuple[type[BaseException], int], ...]:
  """What each failure of train() exits with (the table is in dirroute_jax/exit_codes.py).
  Order matters: the first matching class wins. Imported here, not at the top: launch/tpu.py
  and launch/slurm.py use this module without the training stack."""
  # pylint: disable=g-import-not-at-top
  from dirroute_jax.config import ConfigError
  from dirroute_jax.train import checkpoint, lock
  from dirroute_jax.train.metrics import MetricsFileError

  # pylint: enable=g-import-not-at-top
  return (
    (lock.WorkdirBusyError, exit_codes.BUSY),
    (FloatingPointError, exit_codes.DIVERGED),  # loop.Diverged, NonFiniteStateError
    (checkpoint.CheckpointMismatchError, exit_codes.USAGE),  # another config's checkpoint
    (checkpoint.CheckpointError, exit_codes.IO_ERROR),
    (MetricsFileError, exit_codes.IO_ERROR),
    (OSError, exit_codes.IO_ERROR),  # disk full, permissions, a vanished mount
    (ConfigError, exit_codes.USAGE),
    (ValueError, exit_codes.USAGE),  # bad data files and other input errors
  )


@contextlib.contextmanager
def exit_on_train_error(workdir: str | None = None):
  """`with exit_on_train_error(workdir): train(...)`: a failure with a known cause (busy
  workdir, divergence, a checkpoint or disk error, a bad config or data) becomes
  `error: <message>` on stderr and its exit status from dirroute_jax/exit_codes.py; anything
  else stays a traceback (status CRASH: a bug). An OS error that names no file (a full disk
  while writing metrics) names `workdir`."""
  table = _train_exit_codes()
  try:
    yield
  except tuple(cls for cls, _ in table) as e:
    code = next(code for cls, code in table if isinstance(e, cls))
    if isinstance(e, OSError) and e.filename:
      message = f"{e.strerror}: {e.filename}"
    elif isinstance(e, OSError) and e.errno is not None and workdir:
      message = (
        f"{e.strerror or e} while writing under --workdir={workdir}; free space or fix "
        "the directory, then rerun to resume from the last complete checkpoint"
      )
    else:
      message = str(e)
    fail(message, code)


def exit_if_stopped(summary, skipped: str = "") -> None:
  """After train() returned `summary`: nothing if it trained to `steps`. If Ctrl-C or SIGTERM
  stopped it (a checkpoint saved), says so and exits: PREEMPTED after SIGTERM (a scheduler
  reruns), DONE after Ctrl-C. `skipped`: what the caller leaves undone, for the message."""
  if not summary.interrupted:
    return
  code = exit_codes.PREEMPTED if summary.preempted else exit_codes.DONE
  print(
    f"Exiting with status {exit_codes.describe(code)}: rerun the same command to resume."
    + (f" Not done yet: {skipped}." if skipped else "")
  )
  sys.exit(code)


def _one_line(e: BaseException) -> str:
  """An exception's message on one line, without the repr quoting absl adds around it."""
  text = e.args[0] if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
  text = text.strip().strip("\"'")
  text = text.replace("\\n", "\n").replace("\\'", "'")
  return "; ".join(" ".join(line.split()) for line in text.splitlines() if line.strip())


def config_file_error(path: str) -> str | None:
  """Why the config file `path` cannot be loaded (missing, or a Python syntax error), or None.

  absl's config flag loads the file lazily and buries both in a 30-line traceback."""
  path = path.split(":", 1)[0]  # config_flags allows "file.py:arg"
  if not os.path.isfile(path):
    return (
      f"--config file {path!r} does not exist (looked from {os.getcwd()}); pass e.g. "
      "--config=configs/tiny.py."
    )
  try:
    with open(path, encoding="utf-8") as f:
      compile(f.read(), path, "exec")
  except SyntaxError as e:
    return f"--config file {path}:{e.lineno}: {e.msg}; fix the file (it is Python)."
  except (OSError, UnicodeDecodeError) as e:
    return f"cannot read --config file {path!r}: {e}."
  return None


def config_raised(e: BaseException, argv) -> str | None:
  """One line for an exception raised by the code of the --config file in `argv` (a NameError,
  an ImportError, 1/0 at import or in get_config()), naming file and line; None if `e` did
  not come from that file."""
  paths = [a[len("--config=") :].split(":", 1)[0] for a in argv if a.startswith("--config=")]
  if not paths or not isinstance(e, Exception):
    return None
  path = os.path.realpath(paths[-1])
  line, seen = None, set()
  while e is not None and line is None and id(e) not in seen:  # absl may wrap the error
    seen.add(id(e))
    tb = e.__traceback__
    while tb is not None:  # the innermost frame in the file: where it raised
      if os.path.realpath(tb.tb_frame.f_code.co_filename) == path:
        line = tb.tb_lineno
      tb = tb.tb_next
    if line is None:
      e = e.__cause__ or e.__context__
  if line is None:
    return None
  return (
    f"--config file {paths[-1]}:{line} raised {type(e).__name__}: {_one_line(e)}; fix "
    "the file (it is Python, run when the flags are parsed)."
  )


class _NoLibraryTracebacks(std_logging.Filter):
  """Orbax logs an error in its background threads with the whole traceback (a full disk:
  ~200 lines); the run then stops with one line of its own. Keep orbax's line, drop its
  traceback (--verbosity=0 or higher shows everything)."""

  def filter(self, record):
    if f"{os.sep}orbax{os.sep}" in record.pathname:
      record.exc_info, record.exc_text, record.stack_info = None, None, None
    return True


class _ClosedOutputTolerant:
  """sys.stdout / sys.stderr that survive their reader going away (`train.py | head`, an ssh
  connection that dropped): a progress line nobody reads must not end a run that saves every
  few minutes. On a broken pipe the stream's file descriptor is pointed at /dev/null (so
  Python's own flush at exit finds nothing broken) and writing goes on there."""

  def __init__(self, stream):
    self._stream = stream
    self.closed_pipe = False

  def _drop(self):
    self.closed_pipe = True
    with contextlib.suppress(OSError, ValueError):
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, self._stream.fileno())
      os.close(devnull)

  def write(self, text):
    try:
      return self._stream.write(text)
    except BrokenPipeError:
      self._drop()
      with contextlib.suppress(OSError, ValueError):
        self._stream.write(text)
      return len(text)

  def flush(self):
    try:
      self._stream.flush()
    except BrokenPipeError:
      self._drop()
      with contextlib.suppress(OSError, ValueError):
        self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def tolerate_closed_output() -> None:
  """Makes a closed stdout or stderr harmless for the rest of the process."""
  for name in ("stdout", "stderr"):
    stream = getattr(sys, name)
    if stream is not None and not isinstance(stream, _ClosedOutputTolerant):
      setattr(sys, name, _ClosedOutputTolerant(stream))


class _NoOrphanedReads(std_logging.Filter):
  """asyncio logs "Task/Future exception was never retrieved" for each read orbax had in
  flight when a restore failed (a damaged step, or one a trainer deleted under a reader): one
  multi-line record per array. The failure itself is reported once, by the restore."""

  def filter(self, record):
    return "exception was never retrieved" not in record.getMessage()


def _unraisable(hook):
  """After a failed write, tensorstore's pending callbacks post to orbax's already-closed event
  loop, each a traceback ("Event loop is closed", dozens); the failure itself is reported once.
  Everything else goes to the previous hook."""

  def quiet(info):
    if isinstance(info.exc_value, RuntimeError) and str(info.exc_value) == "Event loop is closed":
      return
    # After a failed read (a truncated or zeroed array file) orbax's pending read coroutines
    # are collected unfinished, each with a traceback (148 for the tiny model); the failure
    # itself is reported once, by the restore that falls back.
    code = getattr(info.object, "cr_code", None)
    if code is not None and any(
      f"{os.sep}{lib}{os.sep}" in code.co_filename for lib in ("orbax", "tensorstore", "asyncio")
    ):
      return
    hook(info)

  return quiet


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """absl's parser with readable errors; library INFO logs (orbax is chatty) hidden unless
  --verbosity is given. Exits with exit_codes.USAGE on any bad flag."""
  is_config_file = "config" in flag_values and isinstance(
    flag_values["config"], _config_flags_impl._ConfigFlag
  )  # pylint: disable=protected-access
  for arg in argv[1:]:
    if arg == "--":
      break
    if is_config_file and arg.startswith("--config="):
      if why := config_file_error(arg[len("--config=") :]):
        fail(why)
  try:
    rest = flag_values(argv)
    if is_config_file:  # load it now, so its errors are flag errors too
      flag_values["config"].value  # pylint: disable=pointless-statement  # noqa: B018
  except Exception as e:  # pylint: disable=broad-exception-caught
    if is_config_file and (why := config_raised(e, argv[1:])):
      fail(why)
    if not isinstance(e, (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError)):
      raise
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    hint = (
      f" Overrides given: {' '.join(overrides)}. Keys must exist in the --config file's "
      "get_config() (see dirroute_jax/config.py), with values of the same type."
      if overrides
      else " Run with --helpfull to list flags."
    )
    fail(f"bad flag or config override ({type(e).__name__}: {_one_line(e)}).{hint}")
  if flag_values is flags.FLAGS:
    tolerate_closed_output()
  if flag_values is flags.FLAGS and not any(a.startswith(("--verbosity", "-v")) for a in argv[1:]):
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_handler().addFilter(_NoLibraryTracebacks())
    std_logging.getLogger("asyncio").addFilter(_NoOrphanedReads())
    sys.unraisablehook = _unraisable(sys.unraisablehook)
    # After a failed background write, orbax's unstarted write coroutines are collected at
    # exit, each a two-line RuntimeWarning after our one-line error. This package has no
    # coroutines of its own, so any such warning is a library's.
    warnings.filterwarnings(
      "ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning
    )
  return rest


# train/distributed.py's MODES, repeated: this module must not import jax (launch/tpu.py and
# launch/slurm.py check train flags without the training stack); tests/test_launchers.py
# checks that the two agree.
DISTRIBUTED_MODES = ("auto", "on", "off")


def define_train_flags(
  flag_values: flags.FlagValues = flags.FLAGS, sys_argv: list[str] | None = None
) -> types.SimpleNamespace:
  """Every flag of launch/train.py, defined once: train.py runs with them, and launchers check
  the flags they forward to it (check_train_args) with the same definitions. `sys_argv`: the
  command line whose --config.* overrides are to be accepted (default sys.argv)."""
  fv = flag_values
  return types.SimpleNamespace(
    config=config_flags.DEFINE_config_file(
      "config", None, "configs/*.py file.", lock_config=True, flag_values=fv, sys_argv=sys_argv
    ),
    workdir=flags.DEFINE_string(
      "workdir", None, "Checkpoints, metrics.jsonl, TensorBoard.", flag_values=fv
    ),
    allow_config_change=flags.DEFINE_bool(
      "allow_config_change",
      False,
      "Resume even though the config differs from the checkpoint's in what the run means "
      "(model, pooling, tokenizer, data, seed, optimizer). Off: such a resume is refused.",
      flag_values=fv,
    ),
    compilation_cache=flags.DEFINE_string(
      "compilation_cache",
      os.path.expanduser("~/.cache/dirroute_jax/jax_compilation_cache"),
      "Persistent XLA compilation cache ('' disables); makes resumes start fast.",
      flag_values=fv,
    ),
    distributed=flags.DEFINE_enum(
      "distributed",
      "auto",
      DISTRIBUTED_MODES,
      "Multi-process start-up: auto = when the flags below are given or SLURM / Cloud TPU / "
      "Open MPI runs several processes; on = always (JAX detects what is unset); off = "
      "never.",
      flag_values=fv,
    ),
    coordinator_address=flags.DEFINE_string(
      "coordinator_address",
      None,
      "HOST:PORT of process 0's coordinator (multi-process).",
      flag_values=fv,
    ),
    num_processes=flags.DEFINE_integer(
      "num_processes", None, "Processes in the job.", flag_values=fv
    ),
    process_id=flags.DEFINE_integer(
      "process_id", None, "This process's rank, 0-based.", flag_values=fv
    ),
    local_device_ids=flags.DEFINE_string(
      "local_device_ids",
      None,
      "Comma-separated local device ids this process drives.",
      flag_values=fv,
    ),
  )


def check_train_args(
  config: str, workdir: str, train_args: list[str] | tuple[str, ...], repo: str
) -> None:
  """Parses `train_args` (what a launcher forwards to launch/train.py after `--`) with
  launch/train.py's flag definitions and validates the resulting config, here and now.

  Raises:
    ValueError: with a one-line message, for any flag train.py would reject.
  """
  from dirroute_jax.config import ConfigError, validate_config  # pylint: disable=g-import-not-at-top

  for arg in train_args:
    name = arg.split("=", 1)[0].lstrip("-")
    if name in ("dry_run", "nodry_run"):
      raise ValueError(
        "--dry_run after `--` would go to launch/train.py; put it before `--` "
        "(the launcher's own flag)."
      )
    if name in ("config", "workdir"):
      raise ValueError(
        f"--{name} after `--`: give it to the launcher (before `--`), which passes it on."
      )
  path = config if os.path.isabs(config) else os.path.join(repo, config)
  if why := config_file_error(path):
    raise ValueError(why)
  argv = ["launch/train.py", f"--config={path}", f"--workdir={workdir}", *train_args]
  fv = flags.FlagValues()
  holders = define_train_flags(fv, sys_argv=argv)
  try:
    fv(argv)
    validate_config(holders.config.value)
  except ConfigError as e:
    raise ValueError(f"the flags after `--` give a bad config: {e}") from None
  except Exception as e:  # pylint: disable=broad-exception-caught
    if why := config_raised(e, argv):
      raise ValueError(why) from None
    if not isinstance(e, (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError)):
      raise
    raise ValueError(
      f"launch/train.py would reject the flags after `--` ({type(e).__name__}: {_one_line(e)})."
    ) from None
