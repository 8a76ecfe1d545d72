"""Downstream benchmarks with lm-evaluation-harness: every model of a workdir, side by side.

  python launch/lm_eval.py --workdir=workdirs/tiny --tasks=hellaswag,arc_easy \
      --models=routed,baseline --out=workdirs/tiny/lm_eval.json
  python launch/lm_eval.py --workdir=DIR --tasks=dirroute_local_mc \
      --include_path=tests/lm_eval_tasks --models=routed,routed:off,baseline

Prints each task's metrics per model with their standard errors, and each model's paired
difference from the baseline (per document, Student-t 95% interval); writes it all as JSON.
A model is `name` or `name:routing` (routing: off, prefix, or a number in [0, 1]; see
dirroute_jax/export/lm_eval_adapter.py). lm-eval's datasets download on first use.
"""

import json
import os
import sys

# Python puts this file's folder first on sys.path, where `import lm_eval` would find this
# script (launch/lm_eval.py) instead of lm-evaluation-harness.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from absl import app, flags  # noqa: E402  pylint: disable=g-import-not-at-top

from dirroute_jax import exit_codes  # noqa: E402
from dirroute_jax.analysis.load import LOAD_ERRORS, load_workdir  # noqa: E402
from dirroute_jax.cli import fail, parse_flags  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A launch/train.py workdir.")
_TASKS = flags.DEFINE_string("tasks", None, "lm-eval task names, comma-separated.")
_MODELS = flags.DEFINE_string(
  "models",
  "routed,baseline",
  "Models of the workdir, comma-separated; name:routing for an "
  "intervention (routed:off, routed:prefix, routed:0.5).",
)
_OUT = flags.DEFINE_string("out", None, "JSON file to write (default WORKDIR/lm_eval.json).")
_INCLUDE = flags.DEFINE_string("include_path", None, "Folder of extra task YAMLs.")
_LIMIT = flags.DEFINE_float("limit", None, "Documents per task (a fraction if < 1).")
_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "Few-shot examples (task default).")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Rows per jitted call.", lower_bound=1)
_MAX_LEN = flags.DEFINE_integer(
  "max_length", None, "Tokens the models see (default: the training seq_len)."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flags_as_required(["workdir", "tasks"])


def main(argv):
  del argv
  try:
    from dirroute_jax.export import lm_eval_compare  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    fail(str(e))
  try:
    specs = lm_eval_compare.parse_model_specs(_MODELS.value)
  except ValueError as e:
    fail(str(e))
  try:
    run = load_workdir(_WORKDIR.value, step=_STEP.value)
  except LOAD_ERRORS as e:
    fail(f"cannot load {_WORKDIR.value!r}: {e}")
  limit = _LIMIT.value
  if limit is not None and limit >= 1:
    limit = int(limit)
  tasks = [t.strip() for t in _TASKS.value.split(",") if t.strip()]
  try:
    result = lm_eval_compare.compare(
      run,
      tasks,
      specs,
      include_path=_INCLUDE.value,
      limit=limit,
      num_fewshot=_FEWSHOT.value,
      batch_size=_BATCH.value,
      max_length=_MAX_LEN.value,
    )
  except (ValueError, KeyError) as e:  # a bad model/routing spec, an unknown task
    fail(str(e).strip("'\""))
  out = _OUT.value or os.path.join(_WORKDIR.value, "lm_eval.json")
  try:
    with open(out, "w") as f:
      json.dump(result, f, indent=2, default=str)
  except OSError as e:
    fail(f"cannot write {out!r}: {e}", exit_codes.IO_ERROR)
  print(f"\n{', '.join(result['models'])} at step {result['step']} of {result['workdir']}\n")
  print(lm_eval_compare.format_table(result))
  print(f"\nWrote {out}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
