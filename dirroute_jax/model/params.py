"""Parameter accounting from `jax.eval_shape`: nothing is allocated, so 433M counts on a laptop."""

from __future__ import annotations

import dataclasses
import functools
import json
import math

import flax.linen as nn
import flax.traverse_util
import ml_collections
import numpy as np

from dirroute_jax.config import model_variant
from dirroute_jax.model.transformer import abstract_params, build_model, padded_vocab_size

COMPONENTS = ("embedding", "attention", "mlp", "norms", "routers", "directions")


def component_of(path: tuple[str, ...]) -> str:
  """Which row of the accounting table a parameter path belongs to."""
  if path[0] == "embed":
    return "embedding"
  if "router" in path:
    return "routers"
  if path[-1] == "directions":
    return "directions"
  if "attn" in path:
    return "attention"
  if "mlp" in path:
    return "mlp"
  if path[-1] == "scale":
    return "norms"
  raise ValueError(f"unaccounted parameter {'/'.join(path)}")


@dataclasses.dataclass(frozen=True)
class ParamCount:
  by_component: dict[str, int]  # with the vocab padded as the model allocates it
  padded_vocab_rows: int  # embedding rows that exist only for padding

  @property
  def total(self) -> int:
    return sum(self.by_component.values())

  @property
  def total_unpadded(self) -> int:
    """The count a paper reports: the padding rows are not model capacity."""
    return self.total - self.padded_vocab_rows

  @property
  def routing(self) -> int:
    return self.by_component["routers"] + self.by_component["directions"]


def count_params(model_cfg) -> ParamCount:
  shapes = nn.meta.unbox(abstract_params(build_model(model_cfg)))
  by_component = dict.fromkeys(COMPONENTS, 0)
  for path, leaf in flax.traverse_util.flatten_dict(shapes).items():
    by_component[component_of(path)] += int(np.prod(leaf.shape))
  pad_rows = padded_vocab_size(model_cfg) - model_cfg.vocab_size
  return ParamCount(by_component, pad_rows * model_cfg.d_model)


@functools.lru_cache(maxsize=64)
def _matched_d_ff(model_json: str) -> int:
  model_cfg = ml_collections.ConfigDict(json.loads(model_json))
  target = count_params(model_variant(model_cfg, "routed")).total_unpadded
  base_cfg = model_variant(model_cfg, "baseline")
  base_cfg.d_ff = 1
  at_1 = count_params(base_cfg).total_unpadded
  base_cfg.d_ff = 2
  per_unit = count_params(base_cfg).total_unpadded - at_1  # 3 * d_model * num_layers (SwiGLU)
  # The count is affine in d_ff, so the closest integer is one of the two around the solution.
  exact = 1 + (target - at_1) / per_unit
  below, above = max(1, math.floor(exact)), max(1, math.ceil(exact))
  return min((below, above), key=lambda f: (abs(at_1 + (f - 1) * per_unit - target), f))


def matched_d_ff(model_cfg) -> int:
  """d_ff of the parameter-matched baseline ("matched" in config.MODEL_VARIANTS).

  The rule: the baseline (routing off) with the integer d_ff whose parameter count, vocab
  unpadded, is closest to the routed model's; a tie goes to the smaller d_ff. Only the MLP
  widens (every block by the same amount), so the residual mismatch is at most half of one
  unit of d_ff, 1.5 * d_model * num_layers parameters (`format_table` prints it).
  """
  return _matched_d_ff(model_cfg.to_json())


def count_pair(model_cfg, names=("routed", "baseline", "matched")) -> dict[str, ParamCount]:
  """Counts for the routed model, its baseline (the same config with routing off) and the
  parameter-matched baseline, each as `config.model_variant` builds it for training."""
  return {name: count_params(model_variant(model_cfg, name)) for name in names}


def format_table(counts: dict[str, ParamCount], matched_d_ff: int | None = None) -> str:
  routed, baseline = counts["routed"], counts["baseline"]
  names = [n for n in ("baseline", "routed", "matched") if n in counts]
  rows = [f"{'component':<22}" + "".join(f"{n:>16}" for n in names)]
  for comp in COMPONENTS:
    rows.append(f"{comp:<22}" + "".join(f"{counts[n].by_component[comp]:>16,}" for n in names))
  rows.append(f"{'total (padded vocab)':<22}" + "".join(f"{counts[n].total:>16,}" for n in names))
  rows.append(f"{'total (vocab unpadded)':<22}"
              + "".join(f"{counts[n].total_unpadded:>16,}" for n in names))
  overhead = routed.routing / baseline.total_unpadded
  rows.append(f"routing overhead: {routed.routing:,} params = {100 * overhead:.3f}% of the "
              f"unpadded baseline ({100 * routed.routing / baseline.total:.3f}% of the padded)")
  if "matched" in counts:
    gap = counts["matched"].total_unpadded - routed.total_unpadded
    width = f" (d_ff {matched_d_ff})" if matched_d_ff is not None else ""
    rows.append(f"matched baseline{width}: {gap:+,} params vs routed = "
                f"{100 * gap / routed.total_unpadded:+.4f}% (closest integer d_ff)")
  return "\n".join(rows)
