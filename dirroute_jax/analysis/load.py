"""Open a training workdir for analysis: config, models, params and tokenizer, on this host's
devices whatever topology trained it. Reading goes through dirroute_jax/reader.py (read-only:
no write probe, no writer lock), never through training's Checkpointer."""

from __future__ import annotations

import dataclasses
import functools
import logging as std_logging

import flax.linen as nn
import jax
import ml_collections
from absl import logging

from dirroute_jax import workdir as workdir_lib
from dirroute_jax.data import tokenizers
from dirroute_jax.data.pipeline import Data, make_data
from dirroute_jax.model.transformer import Transformer, abstract_params, build_model
from dirroute_jax.model.variants import model_configs
from dirroute_jax.reader import WorkdirReader
from dirroute_jax.train.integrity import CheckpointError

# What load_workdir raises for a workdir it cannot open (missing, no checkpoint, every
# checkpoint damaged, a checkpoint of another shape): launchers turn these into one line.
LOAD_ERRORS = (FileNotFoundError, ValueError, OSError, CheckpointError)


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
    return WorkdirReader(self.path).tokenizer(self.cfg)

  @functools.cached_property
  def data(self) -> Data:
    """The run's data (held-out batches with domain labels), rebuilt from the corpus cache
    and tokenized with the run's own tokenizer."""
    data = make_data(self.cfg, tokenizer=self.tokenizer)
    record, damaged = workdir_lib.read_data_fingerprint(self.path)
    if damaged:
      logging.warning("%s; the corpus cannot be compared with the one the run trained on.", damaged)
    changed = workdir_lib.fingerprint_changes(record, {"corpus": data.record()["corpus"]})
    if "corpus" in changed:
      logging.warning(
        "The corpus has changed since %s was trained (fingerprint %s, now %s: a "
        "different project version or data options); held-out numbers are on today's "
        "corpus.",
        self.path,
        *changed["corpus"],
      )
    return data


class _DropReadOnlyNotice(std_logging.Filter):
  """Orbax warns "Given directory is read only" each time a checkpoint is opened read-only,
  which is what loading for analysis asks for (dirroute_jax/reader.py)."""

  def filter(self, record):
    return "Given directory is read only" not in record.getMessage()


def load_workdir(path: str, *, step: int | None = None) -> Workdir:
  """Opens the run in `path` (at `step`, default the newest usable one). A damaged newest
  checkpoint (config or arrays) is skipped with a warning; raises one of LOAD_ERRORS."""
  absl_logger = std_logging.getLogger("absl")
  if not any(isinstance(f, _DropReadOnlyNotice) for f in absl_logger.filters):
    absl_logger.addFilter(_DropReadOnlyNotice())
  with WorkdirReader(path) as reader:
    cfg = reader.config(step)
    models = {name: build_model(mc) for name, mc in model_configs(cfg).items()}
    device = jax.sharding.make_single_device_sharding(jax.local_devices()[0])
    abstract = {
      name: jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
        nn.meta.unbox(abstract_params(model)),
      )
      for name, model in models.items()
    }
    params, step = reader.params(abstract, step=step)
  return Workdir(path=path, step=step, cfg=cfg, models=models, params=params)


def as_workdir(run_or_path) -> Workdir:
  """Analyses accept a loaded Workdir or a path to one."""
  return load_workdir(run_or_path) if isinstance(run_or_path, str) else run_or_path
