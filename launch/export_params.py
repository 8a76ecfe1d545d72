"""A params-only copy of a workdir for analysis: every model's parameters, no optimizer state.

  python launch/export_params.py --workdir=workdirs/tiny --out=workdirs/tiny_params
  python launch/export_params.py --workdir=DIR --out=DIR_PARAMS --dtype=float32 --step=200

The copy opens wherever the workdir does, on one CPU device: launch/interpret.py,
launch/sample.py, launch/audit.py, launch/export.py and `load_workdir` take it as --workdir.
bf16 (the default) halves the float32 params and is ~1/6 of a full AdamW checkpoint; its
numbers are those of the rounded weights. float32 keeps the trained weights bit for bit.
"""

from absl import app, flags

from dirroute_jax import exit_codes
from dirroute_jax.analysis.load import LOAD_ERRORS, load_workdir
from dirroute_jax.cli import fail, parse_flags
from dirroute_jax.export import params_only

_WORKDIR = flags.DEFINE_string("workdir", None, "A launch/train.py workdir.")
_OUT = flags.DEFINE_string("out", None, "New folder for the copy.")
_DTYPE = flags.DEFINE_enum(
  "dtype", "bfloat16", list(params_only.DTYPES), "Parameter dtype on disk (loaded back as float32)."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  try:
    run = load_workdir(_WORKDIR.value, step=_STEP.value)
  except LOAD_ERRORS as e:
    fail(f"cannot load {_WORKDIR.value!r}: {e}", exit_codes.USAGE)
  try:
    done = params_only.export_params(run, _OUT.value, dtype=_DTYPE.value)
  except ValueError as e:
    fail(str(e), exit_codes.USAGE)
  except OSError as e:
    fail(f"cannot write {_OUT.value!r}: {e}", exit_codes.IO_ERROR)
  print(
    f"Wrote the params of {', '.join(done.models)} (step {done.step}, "
    f"{done.num_params:,} parameters, {done.dtype}: {done.array_bytes / 2**20:.1f} MiB) to "
    f"{done.path}; open it with --workdir={done.path}."
  )


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
