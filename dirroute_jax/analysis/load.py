"""Open a training workdir for analysis: config, models, params and tokenizer, on this host's
devices whatever topology trained it."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging as std_logging

from absl import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from dirroute_jax import workdir as workdir_lib
from dirroute_jax.config import default_config, flatten
from dirroute_jax.data import tokenizers
from dirroute_jax.data.pipeline import Data, make_data
from dirroute_jax.model.transformer import Transformer, abstract_params, build_model
from dirroute_jax.model.variants import model_configs
from dirroute_jax.train import checkpoint


# What load_workdir raises for a workdir it cannot open (missing, no checkpoint, every
# checkpoint damaged, a checkpoint of another shape): launchers turn these into one line.
LOAD_ERRORS = (FileNotFoundError, ValueError, OSError, checkpoint.CheckpointError)


@dataclasses.dataclass
class Workdir:
  """A trained set of models. `models[name]` and `params[name]` go to `forward(...)`."""

  path: str
  step: int
  cfg: ml_collections.ConfigDict
  models: dict[str, Transformer]
  params: dict

  @functools.cached_property
  def tokenizer(self) -> tokenizers.Tokenizer:
    tok = tokenizers.load_from_workdir(self.cfg, self.path)
    record, _ = workdir_lib.read_data_fingerprint(self.path)
    trained_with = (record or {}).get("tokenizer")
    if trained_with is not None and trained_with != tok.fingerprint:
      # A valid tokenizer.json of another run decodes without error, into the wrong text.
      logging.warning(
          "The tokenizer of %s (%s) is not the one the run trained with (%s, recorded in %s); "
          "token ids will be encoded and decoded wrongly. Restore the run's own %s.", self.path,
          tok.fingerprint, trained_with, workdir_lib.data_fingerprint(self.path),
          workdir_lib.tokenizer(self.path).name)
    return tok

  @functools.cached_property
  def data(self) -> Data:
    """The run's data (held-out batches with domain labels), rebuilt from the corpus cache
    and tokenized with the run's own tokenizer."""
    data = make_data(self.cfg, tokenizer=self.tokenizer)
    record, damaged = workdir_lib.read_data_fingerprint(self.path)
    if damaged:
      logging.warning("%s; the corpus cannot be compared with the one the run trained on.",
                      damaged)
    if record is not None and "corpus" in record:
      trained_on = record["corpus"]
      if trained_on != data.stats.get("corpus_fingerprint"):
        logging.warning(
            "The corpus has changed since %s was trained (fingerprint %s, now %s: a "
            "different project version or data options); held-out numbers are on today's "
            "corpus.", self.path, trained_on, data.stats.get("corpus_fingerprint"))
    return data


def config_from_json(saved: dict) -> ml_collections.ConfigDict:
  """The saved config merged over today's defaults (keys added since then get defaults)."""
  cfg = default_config()
  cfg.update_from_flattened_dict(flatten(saved))
  return cfg


class _DropReadOnlyNotice(std_logging.Filter):
  """Orbax warns "Given directory is read only" each time a checkpoint is opened read-only,
  which is what loading for analysis asks for (twice: config, then params)."""

  def filter(self, record):
    return "Given directory is read only" not in record.getMessage()


def load_workdir(path: str, *, step: int | None = None) -> Workdir:
  """Opens the run in `path` (at `step`, default the newest usable one). A damaged newest
  checkpoint (config or arrays) is skipped with a warning; raises one of LOAD_ERRORS."""
  if not workdir_lib.path(path).is_dir():
    raise FileNotFoundError(f"{path} is not a directory (give the --workdir of a "
                            "launch/train.py run)")
  absl_logger = std_logging.getLogger("absl")
  if not any(isinstance(f, _DropReadOnlyNotice) for f in absl_logger.filters):
    absl_logger.addFilter(_DropReadOnlyNotice())
  cfg = config_from_json(checkpoint.restore_config(path, step=step))
  models = {name: build_model(mc) for name, mc in model_configs(cfg).items()}
  device = jax.sharding.make_single_device_sharding(jax.local_devices()[0])
  # A params-only copy (export/params_only.py) may store bf16: restore as stored (the
  # checksums are of those bits), then cast to the float32 the models hold.
  stored = _params_only_dtype(path)
  abstract = {
      name: jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, stored or s.dtype,
                                                        sharding=device),
                         nn.meta.unbox(abstract_params(model)))
      for name, model in models.items()}
  params, step = checkpoint.restore_params(path, abstract, step=step)
  if stored is not None:
    params = jax.tree.map(lambda x: x.astype(jnp.float32), params)
  return Workdir(path=path, step=step, cfg=cfg, models=models, params=params)


def _params_only_dtype(path: str):
  """The dtype a params-only copy stores its params in; None for a training workdir."""
  marker = workdir_lib.params_only(path)
  if not marker.exists():
    return None
  return jnp.dtype(json.loads(marker.read_text())["dtype"])


def as_workdir(run_or_path) -> Workdir:
  """Analyses accept a loaded Workdir or a path to one."""
  return load_workdir(run_or_path) if isinstance(run_or_path, str) else run_or_path
