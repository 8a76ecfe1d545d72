"""Flag parsing for the thin `launch/*.py` entry points: a bad flag or config override is a
one-line error, not a traceback from inside ml_collections."""

from __future__ import annotations

import sys

from absl import flags, logging


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser with readable errors; library INFO logs (orbax is chatty) hidden unless
  --verbosity is given."""
  try:
    rest = flags.FLAGS(argv)
    if not any(a.startswith(("--verbosity", "-v")) for a in argv[1:]):
      logging.set_verbosity(logging.WARNING)
    return rest
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a for a in argv[1:] if a.startswith("--config.")]
    detail = str(e).strip("\"'")
    hint = (f" Overrides given: {' '.join(overrides)}. Keys must exist in the --config file's "
            "get_config() (see dirroute_jax/config.py), with values of the same type."
            if overrides else " Run with --helpfull to list flags.")
    sys.exit(f"error: bad flag or config override ({type(e).__name__}: {detail}).{hint}")
