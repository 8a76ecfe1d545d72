"""Causal multi-head self-attention with RoPE and the directional-routing hook.

The routing hook sits between the attention-weighted sum of values (o, per head) and W_O, as in
the paper. With `routing=False` the same module is the baseline's attention: no router, no
directions, nothing else different.

The layer is configured by one `AttentionConfig`. How values are mixed by the scores is a
function apart from it, chosen once per trace (`mixing_op`: the fused kernel of
model/kernels.py, the explicit softmax when the pattern is captured, or linear attention), and
incremental decoding's attention over the cache is another (`cached_attention`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dirroute_jax.model import kernels, routing
from dirroute_jax.model.interventions import LayerInterventions, wants

Array = jax.Array


def rope(x_BxTxHxDh: Array, theta: float, offset: Array | int = 0) -> Array:
  """Rotary position embedding (rotate-half form): <rope(q)_i, rope(k)_j> depends on i - j.

  `offset` is the position of x's first token (non-zero when decoding with a cache)."""
  T, Dh = x_BxTxHxDh.shape[1], x_BxTxHxDh.shape[-1]
  inv_freq = theta ** (-jnp.arange(0, Dh, 2, dtype=jnp.float32) / Dh)
  pos_T = jnp.arange(T, dtype=jnp.float32) + jnp.asarray(offset, jnp.float32)
  angle_TxF = pos_T[:, None] * inv_freq[None, :]
  sin, cos = jnp.sin(angle_TxF)[None, :, None, :], jnp.cos(angle_TxF)[None, :, None, :]
  x = x_BxTxHxDh.astype(jnp.float32)
  x1, x2 = x[..., : Dh // 2], x[..., Dh // 2 :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxDh.dtype)


def causal_attention_with_pattern(q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh):
  """Explicit softmax attention that also returns the pattern (for capture and analysis).

  Scores and softmax in float32, like jax.nn.dot_product_attention's XLA path, so both paths
  give the same numbers.
  """
  Dh = q_BxTxHxDh.shape[-1]
  scores_BxHxTxT = jnp.einsum(
    "bqhd,bkhd->bhqk", q_BxTxHxDh, k_BxTxHxDh, preferred_element_type=jnp.float32
  ) / jnp.sqrt(Dh).astype(jnp.float32)
  T = q_BxTxHxDh.shape[1]
  causal_TxT = jnp.tril(jnp.ones((T, T), bool))
  scores_BxHxTxT = jnp.where(causal_TxT, scores_BxHxTxT, jnp.finfo(jnp.float32).min)
  pattern_BxHxTxT = jax.nn.softmax(scores_BxHxTxT, axis=-1)
  o = jnp.einsum("bhqk,bkhd->bqhd", pattern_BxHxTxT.astype(v_BxTxHxDh.dtype), v_BxTxHxDh)
  return o, pattern_BxHxTxT


def causal_linear_attention(q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh):
  """ELU+1 linear attention (Katharopoulos et al. 2020), causal; also returns its weights.

  Written in the masked T x T form: it is used to linearise trained models for analysis, where
  seeing the weights matters more than the O(T) recurrence.
  """
  phi = lambda x: jax.nn.elu(x.astype(jnp.float32)) + 1.0
  T = q_BxTxHxDh.shape[1]
  scores_BxHxTxT = jnp.einsum("bqhd,bkhd->bhqk", phi(q_BxTxHxDh), phi(k_BxTxHxDh))
  scores_BxHxTxT = jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores_BxHxTxT, 0.0)
  weights_BxHxTxT = scores_BxHxTxT / jnp.sum(scores_BxHxTxT, axis=-1, keepdims=True)
  o = jnp.einsum("bhqk,bkhd->bqhd", weights_BxHxTxT.astype(v_BxTxHxDh.dtype), v_BxTxHxDh)
  return o, weights_BxHxTxT


def sd_operator(skew_HxDhxDh: Array, diag_HxDh: Array) -> Array:
  """S - D per head: S = A - A^T (skew-symmetric), D = diag(softplus(d)) >= 0.

  Its symmetric part is -D, negative semi-definite, so every eigenvalue has Re(lambda) <= 0
  (arXiv 2605.18826, [reconstructed from the abstract]).
  """
  a = skew_HxDhxDh.astype(jnp.float32)
  s = a - jnp.swapaxes(a, -1, -2)
  return s - jax.vmap(jnp.diag)(jax.nn.softplus(diag_HxDh.astype(jnp.float32)))


class Projection(nn.Module):
  """`einsum(equation, x, kernel)` with a logically named kernel.

  Linen's DenseGeneral initialises a flattened 2-D kernel and applies the N-D logical
  constraint to it, which fails under a mesh; an explicit einsum keeps one shape throughout.
  """

  equation: str
  shape: tuple[int, ...]
  axes: tuple[str, ...]
  init_std: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(nn.initializers.normal(self.init_std), self.axes),
      self.shape,
      jnp.float32,
    )
    return jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
  """What one attention layer computes, fixed when the model is built (hashable: the model is a
  static argument of jit). `transformer.attention_config` derives it from the model config.

  `linear` and `decode` are modes of a built model, not of training: the linearisation
  analysis and incremental decoding each build their model with them set
  (`Transformer.linear_layers`, `Transformer.decode`)."""

  num_heads: int
  head_dim: int
  d_model: int
  rope_theta: float
  init_std: float
  out_init_std: float
  dtype: jnp.dtype = jnp.float32
  attention: str = "dot"  # "dot": softmax(q.k); "sd": softmax(h_t^T (S - D) h_s)
  attention_impl: str = "auto"  # "auto" | "xla" | "cudnn" | "splash": see model/kernels.py
  routing: bool = False
  num_directions: int = 4
  router_hidden: int = 512
  router_depth: int = 3
  router_activation: str = "gelu"
  router_temperature: float = 5.0
  pooling: str = "causal_mean"
  linear: bool = False  # ELU+1 linear attention instead of softmax (a post-hoc analysis)
  decode: bool = False  # incremental decoding with a "cache" collection (model/sampling.py)

  def __post_init__(self):
    if self.decode and (self.linear or (self.routing and self.pooling != "causal_mean")):
      raise ValueError(
        "incremental decoding needs softmax attention and causal_mean pooling; "
        "a sequence_mean router re-pools the whole prefix at every token."
      )


def mixing_op(cfg: AttentionConfig, with_pattern: bool):
  """The op that mixes values by attention weights, (q, k, v) -> (z_BxTxHxDh, the B x H x T x T
  weights or None), chosen once per trace from the layer's config.

  Linear attention and the explicit softmax return their weights (for capture); otherwise a
  fused kernel may skip materialising them (cuDNN, splash; model/kernels.py picks which)."""
  if cfg.linear:
    return causal_linear_attention
  if with_pattern:
    return causal_attention_with_pattern
  impl = kernels.kernel_in_trace(cfg.attention_impl, cfg.dtype, cfg.head_dim)
  return lambda q, k, v: (kernels.causal_attention(q, k, v, impl), None)


def cached_attention(
  q_BxTxHxDh: Array, k_BxCxHxDh: Array, v_BxCxHxDh: Array, mask_TxC: Array
) -> Array:
  """Softmax attention of a decoded chunk's queries over the whole cache (capacity C)."""
  return jax.nn.dot_product_attention(q_BxTxHxDh, k_BxCxHxDh, v_BxCxHxDh, mask=mask_TxC[None, None])


class Attention(nn.Module):
  """Pre-normed input x_BxTxD -> attention output B x T x D (after W_O)."""

  cfg: AttentionConfig
  prefix: str = "blocks.0.attn"

  def _sow(self, capture: Sequence[str], name: str, value: Array) -> None:
    full = f"{self.prefix}.{name}"
    if wants(capture, full):
      self.sow("intermediates", full, value)

  def _proj(self, name: str) -> Projection:
    c = self.cfg
    return Projection(
      "btd,dhk->bthk",
      (c.d_model, c.num_heads, c.head_dim),
      ("embed", "heads", "head_dim"),
      c.init_std,
      c.dtype,
      name=name,
    )

  def _queries_keys(self, x_BxTxD: Array, offset: Array | int) -> tuple[Array, Array]:
    """q and k after RoPE, for dot-product or S-D scores."""
    c = self.cfg
    H, Dh = c.num_heads, c.head_dim
    if c.attention != "sd":
      return (
        rope(self._proj("query")(x_BxTxD), c.rope_theta, offset),
        rope(self._proj("key")(x_BxTxD), c.rope_theta, offset),
      )
    # One projection h into head space; score(t, s) = h_t^T (S - D) h_s, i.e. the query is
    # (S - D)^T h_t and the key is h_s. RoPE rotates h before the operator.
    h_BxTxHxDh = rope(self._proj("query")(x_BxTxD), c.rope_theta, offset)
    skew = self.param(
      "skew",
      nn.with_logical_partitioning(
        nn.initializers.normal(Dh**-0.5), ("heads", "head_dim", "head_dim_out")
      ),
      (H, Dh, Dh),
      jnp.float32,
    )
    diag = self.param(
      "diag",
      nn.with_logical_partitioning(nn.initializers.zeros_init(), ("heads", "head_dim")),
      (H, Dh),
      jnp.float32,
    )
    op_HxDhxDh = sd_operator(skew, diag).astype(c.dtype)
    return jnp.einsum("bthi,hij->bthj", h_BxTxHxDh, op_HxDhxDh), h_BxTxHxDh

  def _decode_cache(self, k_BxTxHxDh, v_BxTxHxDh, router_x_BxTxD):
    """Appends this chunk's keys and values (and router input) to the cache.

    The cache is created by the first call (its T is the capacity, see model/sampling.py) and
    holds keys, values, the running sum of the router input (what makes the causal prefix mean
    O(1) per token) and the number of positions filled. Returns (all keys, all values, the
    chunk's T x capacity attention mask, the chunk's causal router input u_BxTxD)."""
    B, T, H, Dh = k_BxTxHxDh.shape
    zeros = lambda *shape: lambda: jnp.zeros(shape, jnp.float32)
    keys = self.variable("cache", "keys", zeros(B, T, H, Dh))
    values = self.variable("cache", "values", zeros(B, T, H, Dh))
    router_sum = self.variable("cache", "router_sum", zeros(B, router_x_BxTxD.shape[-1]))
    index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    i = index.value
    keys.value = jax.lax.dynamic_update_slice(
      keys.value, k_BxTxHxDh.astype(jnp.float32), (0, i, 0, 0)
    )
    values.value = jax.lax.dynamic_update_slice(
      values.value, v_BxTxHxDh.astype(jnp.float32), (0, i, 0, 0)
    )
    capacity = keys.value.shape[1]
    pos_T = i + jnp.arange(T)
    mask_TxC = jnp.arange(capacity)[None, :] <= pos_T[:, None]
    x_BxTxD = router_x_BxTxD.astype(jnp.float32)
    cum_BxTxD = router_sum.value[:, None, :] + jnp.cumsum(x_BxTxD, axis=1)
    router_sum.value = cum_BxTxD[:, -1]
    index.value = i + T
    u_BxTxD = cum_BxTxD / (pos_T + 1).astype(jnp.float32)[None, :, None]
    return (
      keys.value.astype(k_BxTxHxDh.dtype),
      values.value.astype(v_BxTxHxDh.dtype),
      mask_TxC,
      u_BxTxD,
    )

  def _route(
    self,
    z_BxTxHxDh: Array,
    router_in: Array,
    pooling: str,
    iv: LayerInterventions,
    capture: Sequence[str],
  ) -> Array:
    """Eq. (1) on the head outputs, with the routing weights of this layer's router.

    `router_in` is the un-pooled router input with `pooling` the config's (the Router pools
    inside, cheaper: see routing.Router), or, when decoding, the input the cache pooled
    already with `pooling` "none"."""
    c = self.cfg
    dirs_HxKxDh = self.param(
      "directions",
      nn.with_logical_partitioning(
        nn.initializers.normal(1.0), ("heads", "directions", "head_dim")
      ),
      (c.num_heads, c.num_directions, c.head_dim),
      jnp.float32,
    )
    if wants(capture, f"{self.prefix}.router_in"):
      self._sow(
        capture, "router_in", router_in if pooling == "none" else routing.pool(router_in, pooling)
      )
    r_BxSxHxK = routing.Router(
      num_heads=c.num_heads,
      num_directions=c.num_directions,
      hidden=c.router_hidden,
      depth=c.router_depth,
      activation=c.router_activation,
      temperature=c.router_temperature,
      pooling=pooling,
      dtype=c.dtype,
      name="router",
    )(router_in)
    r_BxSxHxK = iv.apply_routing(r_BxSxHxK)
    T = z_BxTxHxDh.shape[1]
    self._sow(
      capture, "r", jnp.broadcast_to(r_BxSxHxK, (r_BxSxHxK.shape[0], T) + r_BxSxHxK.shape[2:])
    )
    return routing.suppress(z_BxTxHxDh, r_BxSxHxK, dirs_HxKxDh)

  @nn.compact
  def __call__(
    self, x_BxTxD: Array, router_x_BxTxD: Array, iv: LayerInterventions, capture: Sequence[str] = ()
  ) -> Array:
    c = self.cfg
    # Position of this chunk's first token: 0, or the number already cached when decoding.
    offset = self.get_variable("cache", "index", 0) if c.decode else 0
    q_BxTxHxDh, k_BxTxHxDh = self._queries_keys(x_BxTxD, offset)
    v_BxTxHxDh = self._proj("value")(x_BxTxD)
    activation_axes = (
      "activation_batch",
      "activation_length",
      "activation_heads",
      "activation_head_dim",
    )
    q_BxTxHxDh = nn.with_logical_constraint(q_BxTxHxDh, activation_axes)
    k_BxTxHxDh = nn.with_logical_constraint(k_BxTxHxDh, activation_axes)
    v_BxTxHxDh = nn.with_logical_constraint(v_BxTxHxDh, activation_axes)

    if c.decode:
      k_BxCxHxDh, v_BxCxHxDh, mask_TxC, u_BxTxD = self._decode_cache(
        k_BxTxHxDh, v_BxTxHxDh, router_x_BxTxD
      )
      z_BxTxHxDh = cached_attention(q_BxTxHxDh, k_BxCxHxDh, v_BxCxHxDh, mask_TxC)
      router_in, router_pooling = u_BxTxD, "none"  # the cache keeps the running prefix sum
    else:
      mix = mixing_op(c, wants(capture, f"{self.prefix}.pattern"))
      z_BxTxHxDh, pattern_BxHxTxT = mix(q_BxTxHxDh, k_BxTxHxDh, v_BxTxHxDh)
      if pattern_BxHxTxT is not None:
        self._sow(capture, "pattern", pattern_BxHxTxT)
      router_in, router_pooling = router_x_BxTxD, c.pooling
    self._sow(capture, "z", z_BxTxHxDh)

    if c.routing:
      z_BxTxHxDh = self._route(z_BxTxHxDh, router_in, router_pooling, iv, capture)
    z_BxTxHxDh = iv.apply_heads(z_BxTxHxDh)
    self._sow(capture, "z_routed", z_BxTxHxDh)
    out_BxTxD = Projection(
      "bthk,hkd->btd",
      (c.num_heads, c.head_dim, c.d_model),
      ("heads", "head_dim", "embed"),
      c.out_init_std,
      c.dtype,
      name="out",
    )(z_BxTxHxDh)
    self._sow(capture, "out", out_BxTxD)
    return out_BxTxD
