"""Stop signals that arrive before training has begun.

launch/train.py needs seconds (imports, `jax.distributed.initialize` on a pod, the data) before
train/loop.py installs its Ctrl-C / SIGTERM handler. Without a handler then, SIGTERM kills the
process with no status a scheduler can act on (-15) and a Ctrl-C can be lost inside a library.
`install_early()` runs first thing and only records the signals; the loop's handler replays
them (`take_pending`), so an early SIGTERM still exits PREEMPTED and an early Ctrl-C stops.

Imports nothing heavy: it must run before jax is imported.
"""

from __future__ import annotations

import signal

_pending: list[int] = []


def _record(signum, frame):
  del frame
  _pending.append(signum)


def install_early() -> None:
  for sig in (signal.SIGINT, signal.SIGTERM):
    try:
      signal.signal(sig, _record)
    except ValueError:  # not the main thread
      pass


def take_pending() -> list[int]:
  """The signals recorded so far, oldest first; clears them."""
  out = list(_pending)
  _pending.clear()
  return out
