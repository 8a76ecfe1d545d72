"""Causality audit of a config's routed model and baseline.

  python launch/audit.py --config=configs/tiny.py --config.model.pooling=sequence_mean

Prints one line per model starting with CAUSAL or LEAK; exits 1 if any model leaks. Without
--workdir the models are randomly initialised (the leak is architectural, so random init
exposes it).
"""

import copy
import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from dirroute_jax.analysis.causality import audit_causality
from dirroute_jax.cli import parse_flags
from dirroute_jax.model import transformer

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file.", lock_config=True)
_SEQ_LEN = flags.DEFINE_integer("seq_len", 64, "Length of the audited sequences.")


def main(argv):
  del argv
  cfg = _CONFIG.value
  leak = False
  for name, routing in (("routed", True), ("baseline", False)):
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.routing = routing
    model = transformer.build_model(model_cfg)
    params = transformer.init_params(model, jax.random.key(cfg.seed))
    result = audit_causality(model, params, vocab_size=model_cfg.vocab_size,
                             seq_len=_SEQ_LEN.value, seed=cfg.seed)
    what = f"{name} (pooling={model_cfg.pooling})" if routing else name
    print(f"{result.verdict} {what}: max |change| of logits at positions <= t when tokens > t "
          f"change = {result.max_change:.3g} (tolerance {result.tolerance:.3g}, "
          f"worst cut t={result.worst_cut})")
    leak |= not result.causal
  sys.exit(1 if leak else 0)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
