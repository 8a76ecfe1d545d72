"""One writer per workdir: a lease file `WORKDIR/writer.lock` held while a run trains.

Two runs on one workdir overwrite each other's checkpoints and metrics without either
noticing, so the second one is refused with a message naming the first. The lease is a small
JSON file (host, pid, start time, heartbeat) that a background thread refreshes every
`heartbeat_secs`; it is removed on exit. After a crash it is stale, and taken over with a
warning, when its process is no longer alive on this host, or (from another host, where the
pid cannot be checked) when its heartbeat is older than `stale_secs`. A process is named by
pid, start time (/proc/<pid>/stat), boot id and pid namespace: a restarted container's trainer
is pid 1 again, and must not take the lease its previous self left for its own. A holder in
another pid namespace of this host (a previous container) is watched for one heartbeat
interval instead.

It works through etils.epath, so the same code guards a local path and a gs:// one. Object
stores have no exclusive create, so a take-over is confirmed by reading the file back after a
short pause: of two processes racing for a free workdir, the one whose write landed last
keeps it and the other backs off. Locally the create is exclusive (O_EXCL) as well.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import uuid

from absl import logging
from etils import epath

from dirroute_jax import workdir as workdir_lib

HEARTBEAT_SECS = 30.0
STALE_SECS = 300.0  # a lease from another host whose heartbeat is older than this is dead


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir's lease."""


def _now() -> float:
  return time.time()


def _iso(t: float) -> str:
  return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _read(path: str) -> str | None:
  try:
    with open(path, encoding="ascii", errors="replace") as f:
      return f.read().strip()
  except OSError:
    return None


def _proc_start(pid: int) -> str | None:
  """The start time of process `pid` (clock ticks since boot, /proc/<pid>/stat field 22), or
  None (not Linux, or no such process). With the boot id it tells a restarted container's
  pid 1 from the pid 1 that held the lease before."""
  stat = _read(f"/proc/{pid}/stat")
  if not stat or ")" not in stat:
    return None
  fields = stat.rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
  return fields[19] if len(fields) > 19 else None


def _pid_namespace() -> str | None:
  try:
    return str(os.stat("/proc/self/ns/pid").st_ino)
  except OSError:
    return None


def _identity() -> dict:
  """What identifies this process instance beyond its pid (Linux; empty fields elsewhere)."""
  return {
    "boot_id": _read("/proc/sys/kernel/random/boot_id"),
    "pid_ns": _pid_namespace(),
    "proc_start": _proc_start(os.getpid()),
  }


class WorkdirLock:
  """`with WorkdirLock(workdir): ...` holds the lease; raises WorkdirBusyError if taken."""

  def __init__(
    self,
    workdir: epath.PathLike,
    *,
    heartbeat_secs: float = HEARTBEAT_SECS,
    stale_secs: float = STALE_SECS,
    settle_secs: float = 1.0,
  ):
    self.path = workdir_lib.writer_lock(workdir)
    self.heartbeat_secs = heartbeat_secs
    self.stale_secs = stale_secs
    self.settle_secs = settle_secs
    self.lost = False  # set by the heartbeat when someone else took the lease
    self._record = None
    self._stop = threading.Event()
    self._thread = None

  # --- reading ----------------------------------------------------------------

  def read(self) -> dict | None:
    """The current holder's record, or None if the workdir is free (or the file unreadable)."""
    try:
      return json.loads(self.path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
      return None

  def stale_reason(self, holder: dict) -> str | None:
    """Why `holder`'s lease is dead, or None if it may still be running (or, from another
    pid namespace on this host, cannot be told from here: see `_watch`)."""
    age = _now() - float(holder.get("heartbeat", 0))
    if holder.get("host") == socket.gethostname():
      me, pid = _identity(), int(holder.get("pid", -1))
      if holder.get("boot_id") and me["boot_id"] and holder["boot_id"] != me["boot_id"]:
        return "this host has rebooted since"
      same_ns = not holder.get("pid_ns") or holder["pid_ns"] == me["pid_ns"]
      if same_ns:
        # A pid alone names itself after a restart (pid 1 in every container): the process
        # is the holder only if its start time matches too.
        if not _pid_alive(pid):
          return f"its pid {pid} is not running on this host"
        started = holder.get("proc_start")
        if started and _proc_start(pid) not in (None, started):
          return (
            f"its pid {pid} is now another process (started at another time: the run was restarted)"
          )
    if age > self.stale_secs:
      return f"its heartbeat is {age:.0f} s old (stale after {self.stale_secs:.0f} s)"
    return None

  def _unverifiable(self, holder: dict) -> bool:
    """A holder on this host in another pid namespace (a previous container): its pid means
    nothing here, so only its heartbeat can tell whether it runs."""
    return (
      holder.get("host") == socket.gethostname()
      and bool(holder.get("pid_ns"))
      and holder.get("pid_ns") != _identity()["pid_ns"]
    )

  def _watch(self, holder: dict) -> str | None:
    """Waits a little over one heartbeat interval of `holder`; a live one refreshes its
    lease in that time. The reason it is dead, or None."""
    every = float(holder.get("heartbeat_secs", self.heartbeat_secs))
    window = every * 1.5 + 1.0
    # Time already passed since its last beat counts: a restart a minute later waits not at all.
    wait = max(0.0, window - (_now() - float(holder.get("heartbeat", 0))))
    if wait:
      print(
        f"{self.path} is held by pid {holder.get('pid')} of another container on this "
        f"host (pid namespace {holder.get('pid_ns')}); waiting {wait:.0f} s for its "
        "heartbeat.",
        flush=True,
      )
      time.sleep(wait)
    now = self.read()
    if now is None or now.get("id") != holder.get("id"):
      return "it was released meanwhile"
    if float(now.get("heartbeat", 0)) == float(holder.get("heartbeat", 0)):
      return (
        f"it runs in another pid namespace (a previous container) and its heartbeat "
        f"did not advance in {window:.0f} s"
      )
    return None

  @staticmethod
  def describe(holder: dict) -> str:
    return (
      f"pid {holder.get('pid')} on host {holder.get('host')}, started "
      f"{_iso(float(holder.get('started', 0)))}, last heartbeat "
      f"{_now() - float(holder.get('heartbeat', 0)):.0f} s ago"
    )

  # --- holding ----------------------------------------------------------------

  def acquire(self) -> WorkdirLock:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    now = _now()
    self._record = {
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "started": now,
      "heartbeat": now,
      "id": uuid.uuid4().hex,
      "heartbeat_secs": self.heartbeat_secs,
      **_identity(),
    }
    holder = self.read()
    if holder is None and self.path.exists():  # being created right now, or left half-written
      time.sleep(max(self.settle_secs, 0.2))
      holder = self.read()
      if holder is None and self.path.exists():
        print(f"WARNING: removing the unreadable lease {self.path}.", flush=True)
        self.path.unlink(missing_ok=True)
    took_over = holder is not None
    if holder is not None:
      reason = self.stale_reason(holder)
      if reason is None and self._unverifiable(holder):
        reason = self._watch(holder)
      if reason is None:
        raise self._busy(holder)
      logging.warning(
        "Taking over the stale lease %s of %s: %s.", self.path, self.describe(holder), reason
      )
      print(
        f"WARNING: taking over {self.path} left by a run that ended without releasing it "
        f"({reason}).",
        flush=True,
      )
      self.path.unlink(missing_ok=True)
    self._create()
    # An object store's last write wins, and so does a local take-over racing another one
    # (both unlink, then create): read back whose record is there after a pause.
    if self.settle_secs and (took_over or "://" in str(self.path)):
      time.sleep(self.settle_secs)
    holder = self.read()
    if holder is None or holder.get("id") != self._record["id"]:
      raise self._busy(holder or {})
    self._thread = threading.Thread(target=self._beat, name="workdir-lease", daemon=True)
    self._thread.start()
    return self

  def _create(self):
    data = json.dumps(self._record)
    if "://" in str(self.path):
      self.path.write_text(data)
      return
    try:  # exclusive: of two local processes exactly one gets here first
      fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      raise self._busy(self.read() or {}) from None
    with os.fdopen(fd, "w") as f:
      f.write(data)

  def _rewrite(self):
    """Replaces the record whole: a reader never sees half of it (an object store's write
    is whole anyway)."""
    data = json.dumps(self._record)
    if "://" in str(self.path):
      self.path.write_text(data)
      return
    tmp = f"{self.path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      f.write(data)
    os.replace(tmp, self.path)

  def _busy(self, holder: dict) -> WorkdirBusyError:
    who = self.describe(holder) if holder else "another process"
    return WorkdirBusyError(
      f"{self.path.parent} is in use by another run ({who}); two writers would overwrite "
      f"each other's checkpoints and metrics. Wait for it to finish or stop it, or use "
      f"another --workdir. If that run is gone for good, delete {self.path}."
    )

  def _beat(self):
    while not self._stop.wait(self.heartbeat_secs):
      holder = self.read()
      if holder is None or holder.get("id") != self._record["id"]:
        self.lost = True
        logging.error(
          "Lost the lease %s to %s.",
          self.path,
          self.describe(holder) if holder else "nobody (file removed)",
        )
        return
      self._record["heartbeat"] = _now()
      try:
        self._rewrite()
      except OSError as e:  # a transient store error must not kill training
        logging.warning("Could not refresh %s: %s", self.path, e)

  def check(self):
    """Raises WorkdirBusyError if another process has taken the lease since."""
    if self.lost:
      holder = self.read()
      raise WorkdirBusyError(
        f"another run took over {self.path} "
        f"({self.describe(holder) if holder else 'and removed it'}); stopping so as not to "
        "overwrite its checkpoints."
      )

  def release(self):
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=5)
      self._thread = None
    holder = self.read()
    if self._record is not None and holder is not None and holder.get("id") == self._record["id"]:
      self.path.unlink(missing_ok=True)
    self._record = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()
