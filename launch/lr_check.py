"""Learning-rate check over seed experiments: each model at its own best peak LR, compared best
against best (dirroute_jax/experiments/lr_check.py).

  python launch/seeds.py --out=workdirs/lr_1e-3 --seeds=0,1 --poolings=causal_mean \
      --claims_seed=-1 --config.optim.peak_lr=1e-3 --config.optim.final_lr=1e-4
  (the same with 1e-2 / 1e-3)
  python launch/lr_check.py --runs=workdirs/seeds,workdirs/lr_1e-3,workdirs/lr_1e-2 \
      --pooling=causal_mean --seeds=0,1 --out=workdirs/lr_check

Each --runs directory is one launch/seeds.py experiment at one peak LR (read from its runs'
final.json); writes OUT/lr_check.json and OUT/lr_check.md.
"""

from absl import app, flags

from dirroute_jax.cli import fail, int_list, parse_flags, print_outputs
from dirroute_jax.experiments import lr_check, seeds

_RUNS = flags.DEFINE_list("runs", None, "launch/seeds.py output directories, one per peak LR.")
_POOLING = flags.DEFINE_enum("pooling", "causal_mean", list(seeds.POOLINGS), "Router pooling.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds every directory has finished.")
_OUT = flags.DEFINE_string("out", None, "Where lr_check.json and lr_check.md go.")
flags.mark_flags_as_required(["runs", "out"])


def main(argv):
  del argv
  seed_list = int_list("seeds", _SEEDS.value, "0,1")
  try:
    paths = lr_check.write_outputs(_RUNS.value, _POOLING.value, seed_list, _OUT.value)
  except (FileNotFoundError, ValueError) as e:  # unfinished seeds, or runs that do not pair
    fail(str(e))
  print_outputs(paths)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
