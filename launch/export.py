"""Export a baseline of a trained workdir as a Hugging Face folder (LlamaForCausalLM).

  python launch/export.py --workdir=workdirs/tiny --model=baseline --out=workdirs/tiny_hf
  python launch/export.py --workdir=DIR --model=matched --out=DIR_HF --dtype=bfloat16 --step=200

The folder loads with transformers.AutoModelForCausalLM / AutoTokenizer as it is (and so with
TransformerLens and nnsight): model.safetensors, config.json, generation_config.json and the
tokenizer the model was trained with (tokenizer.json). The routed model has no Hugging Face
architecture: asking for it is an error saying what to do instead (launch/lm_eval.py evaluates
it). Written with numpy only: no torch needed to export.
"""

from absl import app, flags

from dirroute_jax import exit_codes
from dirroute_jax.analysis.load import LOAD_ERRORS, load_workdir
from dirroute_jax.cli import fail, parse_flags
from dirroute_jax.export import hf

_WORKDIR = flags.DEFINE_string("workdir", None, "A launch/train.py workdir.")
_MODEL = flags.DEFINE_string(
  "model",
  "baseline",
  "Which model of the workdir: baseline or matched (routed has no Hugging Face architecture).",
)
_OUT = flags.DEFINE_string("out", None, "Folder to write (created).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", list(hf.DTYPES), "Weight dtype on disk.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  try:
    run = load_workdir(_WORKDIR.value, step=_STEP.value)
  except LOAD_ERRORS as e:
    fail(f"cannot load {_WORKDIR.value!r}: {e}", exit_codes.USAGE)
  try:
    done = hf.export_run(run, _MODEL.value, _OUT.value, dtype=_DTYPE.value)
  except hf.ExportError as e:
    fail(str(e), exit_codes.USAGE)
  except OSError as e:
    fail(f"cannot write {_OUT.value!r}: {e}", exit_codes.IO_ERROR)
  dropped = (
    f"; {done.dropped_vocab_rows} padded vocab rows left out (masked in training)"
    if done.dropped_vocab_rows
    else ""
  )
  print(
    f"Exported {done.model} (step {done.step}, {done.num_params:,} parameters, "
    f"{done.dtype}) to {done.path}{dropped}.\n"
    f"Load it: transformers.AutoModelForCausalLM.from_pretrained({done.path!r})"
  )


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
