"""Parameter accounting from `jax.eval_shape`: nothing is allocated, so 433M counts on a laptop."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import flax.traverse_util
import numpy as np

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


def format_table(counts: dict[str, ParamCount], matched_d_ff: int | None = None) -> str:
  routed, baseline = counts["routed"], counts["baseline"]
  names = [n for n in ("baseline", "routed", "matched") if n in counts]
  rows = [f"{'component':<22}" + "".join(f"{n:>16}" for n in names)]
  for comp in COMPONENTS:
    rows.append(f"{comp:<22}" + "".join(f"{counts[n].by_component[comp]:>16,}" for n in names))
  rows.append(f"{'total (padded vocab)':<22}" + "".join(f"{counts[n].total:>16,}" for n in names))
  rows.append(
    f"{'total (vocab unpadded)':<22}" + "".join(f"{counts[n].total_unpadded:>16,}" for n in names)
  )
  overhead = routed.routing / baseline.total_unpadded
  rows.append(
    f"routing overhead: {routed.routing:,} params = {100 * overhead:.3f}% of the "
    f"unpadded baseline ({100 * routed.routing / baseline.total:.3f}% of the padded)"
  )
  if "matched" in counts:
    gap = counts["matched"].total_unpadded - routed.total_unpadded
    width = f" (d_ff {matched_d_ff})" if matched_d_ff is not None else ""
    rows.append(
      f"matched baseline{width}: {gap:+,} params vs routed = "
      f"{100 * gap / routed.total_unpadded:+.4f}% (closest integer d_ff)"
    )
  return "\n".join(rows)
