"""The one token-weighted cross-entropy every loss and perplexity in the package is built from
(training step, held-out evaluation, ablations)."""

import jax
import optax


def cross_entropy_sums(
  logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(loss_sum_B, tokens_B): per sequence, the weight-summed next-token cross-entropy and the
  summed weights (the number of real target tokens). Sums, not means, so that micro-batches,
  evaluation batches and processes combine exactly: mean = total loss / total tokens."""
  ce_BxT = token_cross_entropy(logits_BxTxV, targets_BxT)
  return (ce_BxT * weights_BxT).sum(axis=-1), weights_BxT.sum(axis=-1)


def token_cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """ce_BxT: each position's next-token cross-entropy, unweighted."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
