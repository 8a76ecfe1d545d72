"""Causality audit: do any model's logits at position t depend on tokens after t?

  python launch/audit.py --config=configs/tiny.py --config.model.pooling=sequence_mean
  python launch/audit.py --workdir=workdirs/tiny

Prints one line per model starting with CAUSAL or LEAK and exits 1 if any model leaks, 2
(exit_codes.USAGE) if it could not audit at all (bad flags, a workdir it cannot load). With
--config the models are randomly initialised (the leak is architectural, so random init
exposes it); with --workdir the trained params of every model in the run are audited.
"""

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from dirroute_jax import exit_codes
from dirroute_jax.analysis.causality import audit_causality
from dirroute_jax.analysis.load import LOAD_ERRORS, load_workdir
from dirroute_jax.cli import fail, parse_flags
from dirroute_jax.model import transformer
from dirroute_jax.model.variants import model_variant

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A launch/train.py workdir to audit instead.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 64, "Length of the audited sequences.")


def _random_models(cfg):
  for name in ("routed", "baseline"):
    model = transformer.build_model(model_variant(cfg.model, name))
    yield name, model, transformer.init_params(model, jax.random.key(cfg.seed))


def main(argv):
  del argv
  if _WORKDIR.value:
    try:
      run = load_workdir(_WORKDIR.value)
    except LOAD_ERRORS as e:
      fail(f"cannot audit {_WORKDIR.value!r}: {e}", exit_codes.USAGE)
    models = [(n, run.models[n], run.params[n]) for n in run.models]
    seed = run.cfg.seed
  elif _CONFIG.value is not None:
    models, seed = list(_random_models(_CONFIG.value)), _CONFIG.value.seed
  else:
    fail("pass --config=configs/X.py (random init) or --workdir=DIR (trained).")
  leak = False
  for name, model, params in models:
    result = audit_causality(
      model, params, vocab_size=model.cfg.vocab_size, seq_len=_SEQ_LEN.value, seed=seed
    )
    what = f"{name} (pooling={model.cfg.pooling})" if model.cfg.routing else name
    print(
      f"{result.verdict} {what}: max |change| of logits at positions <= t when tokens > t "
      f"change = {result.max_change:.3g} (tolerance {result.tolerance:.3g}, "
      f"worst cut t={result.worst_cut})"
    )
    leak |= not result.causal
  sys.exit(1 if leak else 0)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
