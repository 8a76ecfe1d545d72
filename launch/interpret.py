"""Interpretability report of a trained workdir: report.json, report.md and PNG plots.

  python launch/interpret.py --workdir=workdirs/tiny --out=workdirs/tiny/report
  python launch/interpret.py --workdir=DIR --out=OUT --analyses=causality,ablation,induction
  python launch/interpret.py --workdir=DIR --out=OUT --analyses=factual --prompts=my.json

Runs on CPU from any workdir written by launch/train.py, whatever topology trained it.
"""

import time

from absl import app, flags

from dirroute_jax import workdir as workdir_lib
from dirroute_jax.analysis import factual
from dirroute_jax.analysis.load import LOAD_ERRORS, load_workdir
from dirroute_jax.analysis.report import ANALYSES, run_analyses, write_report
from dirroute_jax.cli import fail, parse_flags

_WORKDIR = flags.DEFINE_string("workdir", None, "A launch/train.py workdir.")
_OUT = flags.DEFINE_string("out", None, "Directory for report.json, report.md and plots.")
_ANALYSES = flags.DEFINE_list("analyses", list(ANALYSES), "Which analyses to run.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_PROMPTS = flags.DEFINE_string(
  "prompts",
  None,
  "JSON prompt file for the factual analysis "
  "(default: dirroute_jax/analysis/prompts/factual.json).",
)
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  t0 = time.time()
  try:  # before minutes of analyses, not after
    workdir_lib.check_writable(_OUT.value, f"the report to --out={_OUT.value!r}")
  except workdir_lib.NotWritableError as e:
    fail(str(e))
  options = {}
  if _PROMPTS.value:
    try:
      factual.load_prompts(_PROMPTS.value)
    except ValueError as e:
      fail(f"--prompts: {e}")
    options["factual"] = {"prompts_path": _PROMPTS.value}
  try:
    run = load_workdir(_WORKDIR.value, step=_STEP.value)
    run.tokenizer  # pylint: disable=pointless-statement  # a damaged tokenizer.json: one line  # noqa: B018
  except LOAD_ERRORS as e:
    fail(f"cannot load {_WORKDIR.value!r}: {e}")
  print(
    f"Loaded {', '.join(run.models)} at step {run.step} from {run.path}; running "
    f"{', '.join(_ANALYSES.value)}"
  )
  results = run_analyses(run, _ANALYSES.value, options=options)
  paths = write_report(results, run, _OUT.value)
  if "causality" in results:
    print(results["causality"].note)
  print(
    f"Wrote {paths['md']}, {paths['json']} and {len(paths) - 2} plots in {time.time() - t0:.0f} s"
  )


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
