"""The leak by position in the window, with intervals over seeds
(dirroute_jax/experiments/leak_by_position.py).

  for p in sequence_mean causal_mean; do for s in 5 6 7; do
    python launch/interpret.py --workdir=workdirs/seeds/$p/seed_$s \
        --out=workdirs/leak_by_position/$p/seed_$s --analyses=causality
  done; done
  python launch/leak_by_position.py --root=workdirs/leak_by_position --seeds=5,6,7

Writes ROOT/leak_by_position.json and ROOT/leak_by_position.md.
"""

from absl import app, flags

from dirroute_jax.cli import fail, int_list, parse_flags, print_outputs
from dirroute_jax.experiments import leak_by_position

_ROOT = flags.DEFINE_string("root", None, "ROOT/<pooling>/seed_<s>/report.json, both poolings.")
_SEEDS = flags.DEFINE_list("seeds", None, "Seeds with a report under both poolings.")
flags.mark_flags_as_required(["root", "seeds"])


def main(argv):
  del argv
  seed_list = int_list("seeds", _SEEDS.value, "5,6,7")
  if len(seed_list) < 2:
    fail(f"--seeds={','.join(_SEEDS.value)}: an interval needs at least two seeds.")
  try:
    paths = leak_by_position.write_outputs(_ROOT.value, seed_list)
  except (FileNotFoundError, ValueError) as e:  # a missing or older report
    fail(str(e))
  print_outputs(paths)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
