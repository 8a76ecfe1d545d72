"""A training workdir opened for reading: its steps, config, params, tokenizer and data
fingerprint, for analysis, sampling and export.

Apart from training's writer on purpose: no write probe, no writer lock, no cleanup and nothing
moved aside (train/checkpoint.py: CheckpointReader), so it opens a finished run, a read-only
copy, or a run a trainer is writing right now. A params-only copy (export/params_only.py) opens
the same way; its params come back as the float32 the models hold.

Its own module rather than part of workdir.py: workdir.py names the files and imports nothing
of the package, while reading needs the checkpoint, config and tokenizer layers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from etils import epath

from dirroute_jax import workdir as workdir_lib
from dirroute_jax.config import default_config, flatten
from dirroute_jax.data import tokenizers
from dirroute_jax.train import checkpoint

PyTree = Any


def config_from_json(saved: dict) -> ml_collections.ConfigDict:
  """The saved config merged over today's defaults (keys added since then get defaults)."""
  cfg = default_config()
  cfg.update_from_flattened_dict(flatten(saved))
  return cfg


class WorkdirReader:
  """`WorkdirReader(path)`: one workdir, read through one read-only checkpoint reader.

  Steps are listed afresh on every call (a trainer may be adding and deleting them); a damaged
  newest step is skipped with a warning, and the steps it skipped are named."""

  def __init__(self, path: epath.PathLike, *, step_leaf: str | None = "step"):
    if not workdir_lib.path(path).is_dir():
      raise FileNotFoundError(
        f"{path} is not a directory (give the --workdir of a launch/train.py run)"
      )
    self.path = path
    self._step_leaf = step_leaf

  @functools.cached_property
  def _ckpt(self) -> checkpoint.CheckpointReader:
    """Opened on first use: the tokenizer and fingerprint need no checkpoint."""
    return checkpoint.CheckpointReader(self.path, step_leaf=self._step_leaf)

  def close(self):
    if "_ckpt" in self.__dict__:
      self._ckpt.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def all_steps(self) -> list[int]:
    return self._ckpt.all_steps()

  def latest_step(self) -> int | None:
    return self._ckpt.latest_step()

  def config_json(self, step: int | None = None) -> dict[str, Any]:
    """The config dict saved with `step` (default: the newest step with a readable one)."""
    return self._ckpt.restore_config(step=step)

  def config(self, step: int | None = None) -> ml_collections.ConfigDict:
    return config_from_json(self.config_json(step))

  def stored_dtype(self):
    """The dtype a params-only copy stores its params in; None for a training workdir."""
    marker = workdir_lib.params_only(self.path)
    if not marker.exists():
      return None
    return jnp.dtype(json.loads(marker.read_text())["dtype"])

  def params(
    self, abstract_params_by_model: Mapping[str, PyTree], *, step: int | None = None
  ) -> tuple[dict[str, PyTree], int]:
    """({model name: params}, step): only `params` of each named model, onto the shardings of
    `abstract_params_by_model` (none: the first local device); optimizer moments are not
    read. A params-only copy's params are restored as stored (the checksums are of those
    bits), then cast to the dtype asked for."""
    stored = self.stored_dtype()
    as_stored = (
      abstract_params_by_model
      if stored is None
      else jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, stored, sharding=getattr(s, "sharding", None)),
        dict(abstract_params_by_model),
      )
    )
    params, step = _restore_params(self._ckpt, as_stored, step)
    if stored is not None:
      params = {
        name: jax.tree.map(lambda x, s: x.astype(s.dtype), p, abstract_params_by_model[name])
        for name, p in params.items()
      }
    return params, step

  def data_fingerprint(self) -> tuple[dict | None, str | None]:
    """(record, None), (None, None) without one, (None, why) if damaged: see workdir.py."""
    return workdir_lib.read_data_fingerprint(self.path)

  def tokenizer(self, cfg) -> tokenizers.Tokenizer:
    """The tokenizer the run trained with (`cfg`: its config). Warns if tokenizer.json is not
    the one its data fingerprint records: a valid tokenizer of another run decodes without
    error, into the wrong text."""
    tok = tokenizers.load_from_workdir(cfg, self.path)
    record, _ = self.data_fingerprint()
    changed = workdir_lib.fingerprint_changes(record, {"tokenizer": tok.fingerprint})
    if "tokenizer" in changed and changed["tokenizer"][0] is not None:
      logging.warning(
        "The tokenizer of %s (%s) is not the one the run trained with (%s, recorded in %s); "
        "token ids will be encoded and decoded wrongly. Restore the run's own %s.",
        self.path,
        tok.fingerprint,
        changed["tokenizer"][0],
        workdir_lib.data_fingerprint(self.path),
        workdir_lib.tokenizer(self.path).name,
      )
    return tok


def restore_config(workdir: epath.PathLike, *, step: int | None = None) -> dict[str, Any]:
  """The config dict saved in `workdir` (by default the newest step with one)."""
  with checkpoint.CheckpointReader(workdir) as ckpt:
    return ckpt.restore_config(step=step)


def restore_params(
  workdir: epath.PathLike,
  abstract_params_by_model: Mapping[str, PyTree],
  *,
  step: int | None = None,
  step_leaf: str | None = "step",
) -> tuple[dict[str, PyTree], int]:
  """({model name: params}, step) of a workdir that is not necessarily a directory here (a
  remote one); see WorkdirReader.params. `step_leaf`: see CheckpointReader."""
  with checkpoint.CheckpointReader(workdir, step_leaf=step_leaf) as ckpt:
    return _restore_params(ckpt, abstract_params_by_model, step)


def _restore_params(
  ckpt: checkpoint.CheckpointReader,
  abstract_params_by_model: Mapping[str, PyTree],
  step: int | None,
) -> tuple[dict[str, PyTree], int]:
  """The training state's layout, {"models": {name: {"params": ...}}}, read in part."""
  subtree = {"models": {name: {"params": p} for name, p in abstract_params_by_model.items()}}
  restored, step = ckpt.restore_subtree(subtree, step=step)
  return {name: m["params"] for name, m in restored["models"].items()}, step
