"""A params-only copy of a workdir: every model's parameters (float32 or bf16), no optimizer
state, no data-iterator position, restorable by `analysis.load.load_workdir` (and so by
launch/interpret.py, launch/sample.py, launch/audit.py, launch/export.py and the notebook API)
on a single CPU device, exactly like the full workdir.

The copy is a workdir with one Orbax step holding `{"step", "models": {name: {"params"}}}`
(with the config and per-leaf checksums, as training saves), the run's tokenizer, data
fingerprint and metrics, and `params_only.json` recording the dtype on disk. bf16 params are
cast back to float32 on load (the models' master weights are float32; a bf16 copy is the
rounded weights, not the trained ones: say so when reporting numbers from it).
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np

from dirroute_jax import workdir as workdir_lib
from dirroute_jax.train import checkpoint

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ParamsOnly:
  path: str
  step: int
  dtype: str
  models: tuple[str, ...]
  num_params: int  # all models together
  array_bytes: int  # what the parameter arrays take at `dtype`


def export_params(run, out: str, *, dtype: str = "bfloat16") -> ParamsOnly:
  """Writes the params of every model of a loaded workdir (analysis.load.Workdir) to `out`."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype={dtype!r}: use one of {DTYPES}.")
  out_path = workdir_lib.path(out)
  if workdir_lib.checkpoints(out_path).exists():
    raise ValueError(f"{out} already holds checkpoints; give a new --out folder.")
  if str(out_path.absolute()) == str(workdir_lib.path(run.path).absolute()):
    raise ValueError("--out must differ from --workdir.")
  target = jnp.dtype(dtype)
  params = jax.tree.map(lambda x: jnp.asarray(x, target), run.params)
  state = {
    "step": jnp.asarray(run.step, jnp.int32),
    "models": {name: {"params": p} for name, p in params.items()},
  }
  out_path.mkdir(parents=True, exist_ok=True)
  with checkpoint.Checkpointer(out_path, keep=1, async_save=False) as ckpt:
    ckpt.save(int(run.step), state, config=run.cfg, force=True)
    ckpt.wait()
  for name in (workdir_lib.TOKENIZER, workdir_lib.DATA_FINGERPRINT, workdir_lib.METRICS):
    src = workdir_lib.path(run.path, name)
    if src.exists():
      shutil.copyfile(str(src), str(workdir_lib.path(out_path, name)))
  leaves = jax.tree.leaves(params)
  done = ParamsOnly(
    path=str(out),
    step=int(run.step),
    dtype=dtype,
    models=tuple(run.params),
    num_params=int(sum(x.size for x in leaves)),
    array_bytes=int(sum(x.size * x.dtype.itemsize for x in leaves)),
  )
  workdir_lib.params_only(out_path).write_text(
    json.dumps({"source_workdir": str(run.path), **dataclasses.asdict(done)}, indent=2) + "\n"
  )
  return done


def state_bytes_per_param(cfg) -> float:
  """Bytes per parameter of a full training checkpoint of `cfg`: float32 params plus the
  optimizer state (AdamW: mu and nu), from jax.eval_shape (nothing allocated)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  from dirroute_jax.model.transformer import abstract_params, build_model  # pylint: disable=g-import-not-at-top
  from dirroute_jax.model.variants import model_variant  # pylint: disable=g-import-not-at-top
  from dirroute_jax.train.optimizer import make_optimizer  # pylint: disable=g-import-not-at-top

  model = build_model(model_variant(cfg.model, "routed"))
  params = nn.meta.unbox(abstract_params(model))
  opt = jax.eval_shape(make_optimizer(cfg.optim, cfg.steps).init, params)
  size = lambda tree: sum(
    int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
  )
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  return (size(params) + size(opt)) / n
