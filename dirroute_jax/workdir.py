"""The layout of a training workdir: every file and folder name in it is defined here.

Everything that reads or writes a workdir asks this module for the path, so a name changes in
one place. Paths are `etils.epath.Path`s: a local directory and a `gs://` bucket are the same
code (a `gs://` string must never reach `os.path`/`open`, which would make a local `./gs:/`).

  WORKDIR/
    checkpoints/<step>/         one Orbax step: state/, data/ (iterator position), config/,
                                checksum/ (train/checkpoint.py)
    corrupt_checkpoints/<step>-<time>/
                                steps whose arrays failed their checksums on restore, moved
                                aside (kept as evidence) so the previous step is used
    diverged_checkpoints/<step>-<time>/
                                steps not shown to give a finite loss when a run diverged
                                (train/loop.py)
    metrics.jsonl               one JSON row per logged step (train/metrics.py)
    tensorboard/                TensorBoard events, local workdirs only (train/metrics.py)
    data_fingerprint.json       which corpus and tokenizer the run trained on: a resume on
                                other data is refused, analysis warns (train/loop.py)
    tokenizer.json              the run's trained BPE tokenizer, data.tokenizer=bpe only
                                (data/tokenizers.py)
    writer.lock                 the lease of the one process writing here (train/lock.py)
    profile/                    jax.profiler traces of config.profile_steps (train/loop.py)
    params_only.json            only in a params-only copy (export/params_only.py): the dtype
                                its params are stored in; analysis/load.py casts them back

Nothing here imports the rest of the package, so the data, train and analysis layers all may.
"""

from __future__ import annotations

import json
import uuid

from etils import epath

CHECKPOINTS = "checkpoints"
CORRUPT_CHECKPOINTS = "corrupt_checkpoints"
DIVERGED_CHECKPOINTS = "diverged_checkpoints"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
DATA_FINGERPRINT = "data_fingerprint.json"
TOKENIZER = "tokenizer.json"
WRITER_LOCK = "writer.lock"
PROFILE = "profile"
PARAMS_ONLY = "params_only.json"


def is_remote(workdir: epath.PathLike) -> bool:
  """A URL (gs://...) rather than a local directory."""
  return "://" in str(workdir)


def path(workdir: epath.PathLike, name: str = "") -> epath.Path:
  """`workdir/name` (one of the names above; none: the workdir itself)."""
  root = epath.Path(workdir)
  return root / name if name else root


def checkpoints(workdir: epath.PathLike) -> epath.Path:
  return path(workdir, CHECKPOINTS)


def metrics(workdir: epath.PathLike) -> epath.Path:
  return path(workdir, METRICS)


def tensorboard(workdir: epath.PathLike) -> epath.Path:
  return path(workdir, TENSORBOARD)


def data_fingerprint(workdir: epath.PathLike) -> epath.Path:
  return path(workdir, DATA_FINGERPRINT)


def read_data_fingerprint(workdir: epath.PathLike) -> tuple[dict | None, str | None]:
  """(the record in data_fingerprint.json, None); (None, None) if there is none; (None, why)
  if it is damaged (not UTF-8, not JSON, not an object), the message naming the file."""
  p = data_fingerprint(workdir)
  if not p.exists():
    return None, None
  try:
    record = json.loads(p.read_bytes().decode("utf-8"))
    if not isinstance(record, dict):
      raise ValueError(f"a JSON {type(record).__name__}, not an object")
  except (UnicodeDecodeError, ValueError) as e:
    return None, f"{p} is damaged ({type(e).__name__}: {str(e)[:120]})"
  return record, None


def write_data_fingerprint(workdir: epath.PathLike, record: dict) -> None:
  """Writes `record` (data/pipeline.py: Data.record) as the run's data_fingerprint.json."""
  data_fingerprint(workdir).write_text(json.dumps(record, indent=1))


FINGERPRINT_KEYS = ("corpus", "tokenizer")  # what a run means; token counts only describe it


def fingerprint_changes(saved: dict | None, now: dict) -> dict[str, tuple]:
  """{key: (saved value, value now)} for each fingerprint of `now` that differs from the one
  recorded in `saved` (read_data_fingerprint's record; None: nothing recorded, no changes).
  A key the record lacks (an older version wrote it) is not a change."""
  if saved is None:
    return {}
  return {
    k: (saved[k], now[k])
    for k in FINGERPRINT_KEYS
    if k in now and k in saved and saved[k] != now[k]
  }


def tokenizer(workdir: epath.PathLike) -> epath.Path:
  return path(workdir, TOKENIZER)


def profile(workdir: epath.PathLike) -> epath.Path:
  return path(workdir, PROFILE)


def writer_lock(workdir: epath.PathLike) -> epath.Path:
  return path(workdir, WRITER_LOCK)


class NotWritableError(OSError):
  """A directory cannot be written; the message is one line saying which and why."""


def check_writable(directory: epath.PathLike, what: str | None = None) -> None:
  """Creates `directory` and writes and deletes a probe file in it, so an unwritable directory
  fails at start-up rather than at the first (background) save hours in. The one write probe
  of the package: training's workdir and checkpoints, and a report's --out.

  Raises:
    NotWritableError: "cannot write <what> (<why>); choose a directory you can write to."
      `what` names the directory as the user gave it (default: "to <directory>").
  """
  directory = epath.Path(directory)
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write-probe-{uuid.uuid4().hex}"  # unique per process and host
    probe.write_text("ok")
    probe.unlink()
  except Exception as e:  # pylint: disable=broad-exception-caught  # a remote fs's own errors
    why = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
    raise NotWritableError(
      f"cannot write {what or f'to {directory}'} ({why}); choose a directory you can write to."
    ) from e


def params_only(workdir: epath.PathLike) -> epath.Path:
  return path(workdir, PARAMS_ONLY)
