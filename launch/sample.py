"""Generate text from every model of a trained workdir, side by side (same prompt, same seed).

  python launch/sample.py --workdir=workdirs/tiny --prompt="def " --max_new_tokens=64
  python launch/sample.py --workdir=DIR --prompt="The " --temperature=0   # greedy

Causal models (causal_mean routing, every baseline) decode incrementally with a cache; a
sequence_mean router re-pools the whole prefix at every token (a full forward per token).
"""

import sys

from absl import app, flags

from dirroute_jax.analysis.load import LOAD_ERRORS, load_workdir
from dirroute_jax.cli import fail, parse_flags
from dirroute_jax.model.sampling import is_incremental
from dirroute_jax.train.samples import sample_models

_WORKDIR = flags.DEFINE_string("workdir", None, "A launch/train.py workdir.")
_PROMPT = flags.DEFINE_string("prompt", None, "Text to continue.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate.", lower_bound=1)
_TEMPERATURE = flags.DEFINE_float(
  "temperature", 0.8, "Softmax temperature; 0 = greedy.", lower_bound=0.0
)
_TOP_K = flags.DEFINE_integer(
  "top_k", 40, "Sample among the k most likely tokens; 0 = all.", lower_bound=0
)
_SEED = flags.DEFINE_integer("seed", 0, "Same seed, same text.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flags_as_required(["workdir", "prompt"])


def main(argv):
  del argv
  try:
    run = load_workdir(_WORKDIR.value, step=_STEP.value)
    tokenizer = run.tokenizer  # a damaged tokenizer.json is a load error too
  except LOAD_ERRORS as e:
    fail(f"cannot load {_WORKDIR.value!r}: {e}")
  print(
    f"Loaded {', '.join(run.models)} at step {run.step} from {run.path}; temperature "
    f"{_TEMPERATURE.value}, top_k {_TOP_K.value}, seed {_SEED.value}"
  )
  for name, model in run.models.items():
    if not is_incremental(model):
      print(
        f"note: {name} has a sequence_mean (non-causal) router, which cannot be updated "
        "token by token: it re-pools the whole prefix at every step (a full forward per "
        "token). It was trained seeing whole sequences, so its samples show it out of "
        "distribution."
      )
  length = len(tokenizer.encode(_PROMPT.value)) + _MAX_NEW.value
  if length > run.cfg.seq_len:
    print(
      f"note: prompt + new tokens = {length} tokens, beyond the {run.cfg.seq_len} positions "
      "the models were trained on."
    )
  try:
    samples = sample_models(
      run.models,
      run.params,
      run.tokenizer,
      _PROMPT.value,
      max_new_tokens=_MAX_NEW.value,
      temperature=_TEMPERATURE.value,
      top_k=_TOP_K.value,
      seed=_SEED.value,
    )
  except ValueError as e:
    sys.exit(f"error: {e}")
  for name, s in samples.items():
    how = "incremental" if s.incremental else "re-pooled prefix per token"
    print(f"\n=== {name} ({how}) ===\n{_PROMPT.value}{run.tokenizer.decode(s.tokens)}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
