"""Directional routing (arXiv 2603.14923; METHOD.md §1): the router and the suppression equation.

For each head h with output o_{t,h} (before W_O) and K unit directions d_{h,k}:

    o'_{t,h} = o_{t,h} - sum_k r_{h,k} <o_{t,h}, d_{h,k}> d_{h,k}                      (1)
    r        = sigmoid(temperature * MLP(pool(x)))                                     (2)

`pool` is the paper's mean over the whole sequence ("sequence_mean", non-causal: position t
sees tokens after t) or the prefix mean up to and including t ("causal_mean").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

_ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "silu": nn.silu, "tanh": jnp.tanh}


def unit_directions(dirs_HxKxDh: Array, eps: float = 1e-8) -> Array:
  """The directions are free parameters; eq. (1) uses them renormalised to unit length."""
  dirs = dirs_HxKxDh.astype(jnp.float32)
  return dirs / jnp.sqrt(jnp.sum(dirs * dirs, axis=-1, keepdims=True) + eps)


def suppress(o_BxTxHxDh: Array, r_BxTxHxK: Array, dirs_HxKxDh: Array) -> Array:
  """Eq. (1): removes from every head output its r-weighted components along its directions.

  r may be B x 1 x H x K (one weight per sequence) and broadcasts over T.

  The directions are not orthogonalised, so with K > 1 this is a sum of rank-one projections,
  not a projection onto a subspace, exactly as the paper writes it.

  Runs in o's dtype (the matmuls accumulate in float32 on accelerators regardless): in bf16,
  neither pass makes a float32 copy of the B x T x H x Dh head outputs or their gradient.
  """
  dtype = o_BxTxHxDh.dtype
  d_HxKxDh = unit_directions(dirs_HxKxDh).astype(dtype)
  coef_BxTxHxK = jnp.einsum("bthd,hkd->bthk", o_BxTxHxDh, d_HxKxDh) * r_BxTxHxK.astype(dtype)
  return o_BxTxHxDh - jnp.einsum("bthk,hkd->bthd", coef_BxTxHxK, d_HxKxDh)


def pool(x_BxTxD: Array, pooling: str) -> Array:
  """Router input u_BxSxD: S = 1 for "sequence_mean", S = T for "causal_mean".

  "sequence_mean" is the whole-sequence mean (the paper; every position sees the future);
  "causal_mean" is the running mean over positions <= t, an O(T) cumulative sum. Keeping S = 1
  for the paper's router runs its MLP once per sequence rather than once per token.
  """
  x = x_BxTxD.astype(jnp.float32)
  if pooling == "sequence_mean":
    return jnp.mean(x, axis=1, keepdims=True)
  if pooling == "causal_mean":
    count_T = jnp.arange(1, x.shape[1] + 1, dtype=jnp.float32)
    return jnp.cumsum(x, axis=1) / count_T[None, :, None]
  raise ValueError(f"unknown pooling {pooling!r}; use 'sequence_mean' or 'causal_mean'.")


class Router(nn.Module):
  """Per-layer router, eq. (2): D -> hidden x depth -> H*K logits, shared by its layer's heads.

  Takes the un-pooled router input x_BxTxD and pools it itself. The first layer is affine, so
  it commutes with the prefix mean: W mean_{s<=t}(x_s) + b = mean_{s<=t}(W x_s + b). For
  "causal_mean" with a first layer narrower than D (433M: 512 vs 1536) it runs first: same
  numbers, but the cumulative sum runs over the narrower width and x is never copied to
  float32. For "sequence_mean" pooling comes first, so the MLP runs once per sequence.
  """

  num_heads: int
  num_directions: int
  hidden: int = 512
  depth: int = 3
  activation: str = "gelu"
  temperature: float = 5.0
  pooling: str = "causal_mean"  # or "none": x is the pooled input u already
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    """Returns routing weights r_BxSxHxK in [0, 1] (S = 1 for "sequence_mean", else T)."""
    act = _ACTIVATIONS[self.activation]
    in_axes = ["embed"] + ["router_hidden_in"] * self.depth  # a kernel's two axes need
    out_axes = ["router_hidden"] * self.depth + ["router_out"]  # distinct names to shard
    widths = [self.hidden] * self.depth + [self.num_heads * self.num_directions]
    names = [f"hidden_{i}" for i in range(self.depth)] + ["out"]
    layers = [
      _dense(w, (i, o), self.dtype, n) for w, i, o, n in zip(widths, in_axes, out_axes, names)
    ]
    if self.pooling == "none":  # the caller pooled already (incremental decoding)
      h = layers[0](x_BxTxD)
    elif self.pooling == "causal_mean" and widths[0] < x_BxTxD.shape[-1]:
      h = pool(layers[0](x_BxTxD), self.pooling).astype(self.dtype)
    else:
      h = layers[0](pool(x_BxTxD, self.pooling))
    for layer in layers[1:]:
      h = layer(act(h))
    z_BxSxHxK = h.reshape(h.shape[:-1] + (self.num_heads, self.num_directions))
    # The temperature pushes weights toward 0/1; the sigmoid runs in float32 so that near-binary
    # weights are not rounded in bf16.
    return jax.nn.sigmoid(self.temperature * z_BxSxHxK.astype(jnp.float32))


def _dense(features: int, axes: tuple[str, str], dtype, name: str) -> nn.Dense:
  return nn.Dense(
    features,
    dtype=dtype,
    kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[1],)),
    name=name,
  )
