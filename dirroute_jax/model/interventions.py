"""Interventions and activation capture: small explicit arguments of the pure forward pass.

Nothing here mutates parameters or global state. An `Interventions` value is a pytree of arrays
with a leading layer axis (so it is traced, not baked into the compiled program, and slices per
layer); a field left as None is not applied.

Activation names (stable; `capture=` takes these names or fnmatch patterns such as
`"blocks.*.attn.r"`). `l` is the layer index; shapes use B batch, T positions, D d_model,
H heads, Dh head_dim, K directions, S = 1 for "sequence_mean" pooling and T for "causal_mean".

  blocks.{l}.resid_pre        B x T x D      residual stream entering block l
  blocks.{l}.attn.router_in   B x S x D      pooled router input u (routed models only)
  blocks.{l}.attn.r           B x T x H x K  routing weights after interventions (routed only;
                                             constant over T for "sequence_mean")
  blocks.{l}.attn.pattern     B x H x T x T  attention probabilities [query, key]
  blocks.{l}.attn.z           B x T x H x Dh per-head output before suppression (before W_O)
  blocks.{l}.attn.z_routed    B x T x H x Dh per-head output after suppression and head
                                             interventions: exactly what enters W_O
  blocks.{l}.attn.out         B x T x D      attention output after W_O
  blocks.{l}.resid_mid        B x T x D      residual after the attention block
  blocks.{l}.mlp.out          B x T x D      MLP output
  blocks.{l}.resid_post       B x T x D      residual leaving block l
  final_norm.scale            B x T x 1      the final RMSNorm's 1/rms(x) per position (for DLA)
  logits                      B x T x V      (also the forward's first return value)

For a baseline model the routing names are absent and `attn.z_routed` equals `attn.z`.

Parameter paths and activation names name the same modules two ways: parameters are Flax's
nested dict, one key per module (`params["blocks_2"]["attn"]["out"]["kernel"]`, in path form
`blocks_2/attn/out/kernel`), activations a flat dotted name (`blocks.2.attn.out`). Layer l is
`blocks_{l}` in a parameter path and `blocks.{l}` in an activation name; the module names
after it (`attn`, `mlp`, `embed`, `final_norm`) are the same. So `blocks.2.attn.*` is produced
by the module whose parameters are `params["blocks_2"]["attn"]`. The last component of an
activation name says what was captured, not a parameter: `final_norm.scale` is 1/rms(x), not
the parameter `params["final_norm"]["scale"]`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

CAPTURE_NAMES = (
  "blocks.{l}.resid_pre",
  "blocks.{l}.attn.router_in",
  "blocks.{l}.attn.r",
  "blocks.{l}.attn.pattern",
  "blocks.{l}.attn.z",
  "blocks.{l}.attn.z_routed",
  "blocks.{l}.attn.out",
  "blocks.{l}.resid_mid",
  "blocks.{l}.mlp.out",
  "blocks.{l}.resid_post",
  "final_norm.scale",
  "logits",
)


def wants(capture: Sequence[str], name: str) -> bool:
  """Whether `name` is selected by the capture patterns (exact names or fnmatch patterns)."""
  return any(name == p or fnmatch.fnmatchcase(name, p) for p in capture)


@flax.struct.dataclass
class LayerInterventions:
  """One layer's slice of `Interventions` (no leading layer axis)."""

  routing_value_HxK: Array | None = None
  routing_mask_HxK: Array | None = None
  head_mask_H: Array | None = None
  head_value_HxDh: Array | None = None

  def apply_routing(self, r_BxSxHxK: Array) -> Array:
    if self.routing_mask_HxK is None:
      return r_BxSxHxK
    value = jnp.asarray(self.routing_value_HxK, r_BxSxHxK.dtype)
    return jnp.where(self.routing_mask_HxK, value, r_BxSxHxK)

  def apply_heads(self, z_BxTxHxDh: Array) -> Array:
    if self.head_mask_H is None:
      return z_BxTxHxDh
    value = jnp.asarray(self.head_value_HxDh, z_BxTxHxDh.dtype)
    return jnp.where(self.head_mask_H[:, None], value, z_BxTxHxDh)


@flax.struct.dataclass
class Interventions:
  """Edits of one forward pass. Build with the constructors below; combine with `merge`.

  routing_mask_LxHxK / routing_value_LxHxK: where the mask is True, the routing weight r of
    (layer, head, direction) is replaced by the value, at every position. Ignored by a model
    without routing (so one Interventions value can be given to both models of a pair).
  head_mask_LxH / head_value_LxHxDh: where the mask is True, that head's output (after
    suppression, before W_O) is replaced by the value at every position: zeros for zero
    ablation, a dataset mean of `attn.z_routed` for mean ablation.
  """

  routing_value_LxHxK: Array | None = None
  routing_mask_LxHxK: Array | None = None
  head_mask_LxH: Array | None = None
  head_value_LxHxDh: Array | None = None

  def layer(self, l: int) -> LayerInterventions:
    take = lambda a: None if a is None else a[l]
    return LayerInterventions(
      routing_value_HxK=take(self.routing_value_LxHxK),
      routing_mask_HxK=take(self.routing_mask_LxHxK),
      head_mask_H=take(self.head_mask_LxH),
      head_value_HxDh=take(self.head_value_LxHxDh),
    )

  def merge(self, other: Interventions) -> Interventions:
    """Fields set in `other` override this one's (routing and head edits are independent)."""
    pick = lambda a, b: a if b is None else b
    return Interventions(
      routing_value_LxHxK=pick(self.routing_value_LxHxK, other.routing_value_LxHxK),
      routing_mask_LxHxK=pick(self.routing_mask_LxHxK, other.routing_mask_LxHxK),
      head_mask_LxH=pick(self.head_mask_LxH, other.head_mask_LxH),
      head_value_LxHxDh=pick(self.head_value_LxHxDh, other.head_value_LxHxDh),
    )


def _lhk(model_cfg) -> tuple[int, int, int]:
  return model_cfg.num_layers, model_cfg.num_heads, model_cfg.num_directions


def routing_fixed(model_cfg, value, layers: Iterable[int] | None = None) -> Interventions:
  """Every routing weight (of `layers`, default all) set to `value`; 0.0 turns routing off.

  `value` is a number, or an L x H x K array giving each (layer, head, direction) its own
  constant (e.g. its held-out mean: routing that no longer depends on the input)."""
  L, H, K = _lhk(model_cfg)
  mask = np.zeros((L, H, K), bool)
  mask[list(range(L)) if layers is None else list(layers)] = True
  value_LxHxK = jnp.broadcast_to(jnp.asarray(value, jnp.float32), (L, H, K))
  return Interventions(routing_value_LxHxK=value_LxHxK, routing_mask_LxHxK=jnp.asarray(mask))


def routing_off(model_cfg, layers: Iterable[int] | None = None) -> Interventions:
  """Routing disabled (r = 0) in `layers` (default all): single-layer knockout is `[l]`."""
  return routing_fixed(model_cfg, 0.0, layers)


def force_direction(
  model_cfg, layer: int, head: int, direction: int, value: float = 1.0
) -> Interventions:
  """One (layer, head, direction) weight forced to `value`; all others as the router says."""
  L, H, K = _lhk(model_cfg)
  mask = np.zeros((L, H, K), bool)
  mask[layer, head, direction] = True
  return Interventions(
    routing_value_LxHxK=jnp.full((L, H, K), value, jnp.float32),
    routing_mask_LxHxK=jnp.asarray(mask),
  )


def knockout_heads(
  model_cfg, heads: Iterable[tuple[int, int]], mean_LxHxDh: Array | None = None
) -> Interventions:
  """Head knockout of the given (layer, head) pairs: zero ablation, or mean ablation when the
  dataset mean of `attn.z_routed` (L x H x Dh) is given."""
  L, H, Dh = model_cfg.num_layers, model_cfg.num_heads, model_cfg.head_dim
  mask = np.zeros((L, H), bool)
  for l, h in heads:
    mask[l, h] = True
  value = (
    jnp.zeros((L, H, Dh), jnp.float32)
    if mean_LxHxDh is None
    else jnp.asarray(mean_LxHxDh, jnp.float32)
  )
  if value.shape != (L, H, Dh):
    raise ValueError(f"mean_LxHxDh has shape {value.shape}, expected {(L, H, Dh)}.")
  return Interventions(head_mask_LxH=jnp.asarray(mask), head_value_LxHxDh=value)
