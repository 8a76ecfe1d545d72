"""Forward passes the analyses share: interventions completed to one pytree structure, the
per-window loss sums under an intervention, the held-out mean routing weights, and the one
token-weighted mean over held-out batches that every analysis accumulates.

Here, not in one section's module, because every section measures through them: a section
module then imports only what it computes with, never another section.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from dirroute_jax.model import interventions as iv_lib
from dirroute_jax.model.losses import cross_entropy_sums, token_cross_entropy
from dirroute_jax.model.transformer import Transformer, forward


def complete(model_cfg, iv: iv_lib.Interventions | None = None) -> iv_lib.Interventions:
  """`iv` with every unset field filled by a no-op (all-False masks).

  Every condition then has the same pytree structure and shapes, so one jitted forward per
  model serves all of them: the interventions are traced arrays, not compile-time constants.
  A False mask leaves r and the head outputs bitwise unchanged (`jnp.where`).
  """
  noop = iv_lib.routing_fixed(model_cfg, 0.0, layers=[]).merge(iv_lib.knockout_heads(model_cfg, []))
  return noop if iv is None else noop.merge(iv)


@functools.partial(jax.jit, static_argnums=(0, 6))
def loss_sums(
  model: Transformer, params, inputs_BxT, targets_BxT, weights_BxT, iv, linear_layers: int = 0
):
  """(loss_sum_B, tokens_B). The model is static (hashable by config), so the compiled
  program is cached per model config and batch shape across calls and conditions.
  `linear_layers` (static) linearises the first k layers' attention (analysis/linearise.py)."""
  logits_BxTxV, _ = forward(
    model, params, inputs_BxT, interventions=iv, linear_layers=linear_layers
  )
  return cross_entropy_sums(logits_BxTxV, targets_BxT, weights_BxT)


def token_weighted_mean(sums: Callable[[dict], tuple], batches: Iterable[dict]):
  """sum over batches of `sums(batch)[0]` / sum of `sums(batch)[1]` (the number of real
  tokens it summed over), accumulated in float64 on the host.

  The one loop behind every held-out mean of the analyses (loss, routing weights, token-set
  mass): batches differ in their number of real tokens, so the mean is over tokens, not over
  batches. An empty split divides by 1 (a mean of 0), never by 0.
  """
  total, count = 0.0, 0.0
  for batch in batches:
    s, c = jax.device_get(sums(batch))
    total, count = total + np.asarray(s, np.float64), count + float(c)
  return total / max(count, 1.0)


@functools.partial(jax.jit, static_argnums=(0,))
def _routing_sums(model: Transformer, params, inputs_BxT, weights_BxT):
  """Sum over real input positions of r (L x H x K), as trained."""
  L = model.cfg.num_layers
  _, acts = forward(model, params, inputs_BxT, capture=("blocks.*.attn.r",))
  r_LxBxTxHxK = jnp.stack([acts[f"blocks.{l}.attn.r"] for l in range(L)]).astype(jnp.float32)
  r_LxBxTxHxK = jnp.broadcast_to(
    r_LxBxTxHxK, r_LxBxTxHxK.shape[:2] + weights_BxT.shape[1:] + r_LxBxTxHxK.shape[3:]
  )  # sequence_mean: r is B x 1
  return jnp.einsum("lbthk,bt->lhk", r_LxBxTxHxK, weights_BxT.astype(jnp.float32))


def mean_routing(model: Transformer, params, batches: Iterable[dict]) -> np.ndarray:
  """Held-out mean of the routing weights per (layer, head, direction), token-weighted."""
  mean = token_weighted_mean(
    lambda b: (_routing_sums(model, params, b["inputs"], b["weights"]), np.sum(b["weights"])),
    batches,
  )
  return np.asarray(mean).astype(np.float32)


# Position buckets of position-resolved perplexity: the first positions, where a prefix mean
# over a few tokens differs most from the whole window's (the leak's damage sits there), then
# the middle and the rest of a 128-token window.
POSITION_BUCKETS = ((0, 8), (8, 64), (64, None))


@functools.partial(jax.jit, static_argnums=(0,))
def _position_loss_sums(model: Transformer, params, inputs_BxT, targets_BxT, weights_BxT):
  """(loss_sum_T, tokens_T): summed over the batch, per position."""
  logits_BxTxV, _ = forward(model, params, inputs_BxT)
  ce_BxT = token_cross_entropy(logits_BxTxV, targets_BxT)
  return (ce_BxT * weights_BxT).sum(axis=0), weights_BxT.sum(axis=0)


def bucket_label(lo: int, hi: int | None) -> str:
  return f"{lo}-{hi - 1}" if hi is not None else f"{lo}+"


def ppl_by_position(
  model: Transformer, params, batches: Iterable[dict], buckets=POSITION_BUCKETS
) -> dict[str, float]:
  """Held-out perplexity per bucket of positions in the window ({"0-7": PPL, ...}), token-
  weighted within each bucket; NaN for a bucket with no real tokens (windows shorter than it)."""
  loss_T, tokens_T = 0.0, 0.0
  for batch in batches:
    l_T, t_T = jax.device_get(
      _position_loss_sums(model, params, batch["inputs"], batch["targets"], batch["weights"])
    )
    loss_T = loss_T + np.asarray(l_T, np.float64)
    tokens_T = tokens_T + np.asarray(t_T, np.float64)
  out = {}
  for lo, hi in buckets:
    n = float(np.sum(tokens_T[lo:hi])) if np.ndim(tokens_T) else 0.0
    out[bucket_label(lo, hi)] = math.exp(float(np.sum(loss_T[lo:hi])) / n) if n else math.nan
  return out
