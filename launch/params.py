"""Prints the parameter accounting of a config's routed model, its baseline and the
parameter-matched baseline (the baseline with a wider MLP; nothing allocated).

  python launch/params.py --config=configs/433m.py
"""

from absl import app
from ml_collections import config_flags

from dirroute_jax.cli import parse_flags
from dirroute_jax.model import params, variants

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file.", lock_config=True)


def main(argv):
  del argv
  model_cfg = _CONFIG.value.model
  print(params.format_table(variants.count_pair(model_cfg), variants.matched_d_ff(model_cfg)))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
