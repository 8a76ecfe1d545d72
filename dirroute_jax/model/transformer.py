"""The decoder-only LM (RMSNorm pre-norm, RoPE, SwiGLU, tied embeddings) and its pure forward.

One module serves both models of a pair: `model.routing` in the config switches directional
routing on; with it off this is the baseline, parameter for parameter.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections

from dirroute_jax.config import validate_model_config
from dirroute_jax.model.attention import Attention, AttentionConfig
from dirroute_jax.model.interventions import Interventions, wants

Array = jax.Array

_RESID_AXES = ("activation_batch", "activation_length", "activation_embed")


def padded_vocab_size(model_cfg) -> int:
  m = model_cfg.vocab_pad_multiple
  return int(math.ceil(model_cfg.vocab_size / m) * m)


class RMSNorm(nn.Module):
  eps: float = 1e-6
  dtype: jnp.dtype = jnp.float32
  enabled: bool = True  # False: identity (S-D attention is meant to train without norms)

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> tuple[Array, Array]:
    """Returns (normalised x, 1/rms(x) as B x T x 1); the second is what DLA needs."""
    if not self.enabled:
      return x_BxTxD.astype(self.dtype), jnp.ones(x_BxTxD.shape[:-1] + (1,), jnp.float32)
    scale_D = self.param(
      "scale",
      nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
      (x_BxTxD.shape[-1],),
      jnp.float32,
    )
    x = x_BxTxD.astype(jnp.float32)
    inv_rms_BxTx1 = jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * inv_rms_BxTx1 * scale_D).astype(self.dtype), inv_rms_BxTx1


class SwiGLU(nn.Module):
  d_ff: int
  d_model: int
  init_std: float
  out_init_std: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    def dense(features, axes, std, name):
      return nn.Dense(
        features,
        use_bias=False,
        dtype=self.dtype,
        name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), axes),
      )

    gate_BxTxF = dense(self.d_ff, ("embed", "mlp"), self.init_std, "wi_gate")(x_BxTxD)
    up_BxTxF = dense(self.d_ff, ("embed", "mlp"), self.init_std, "wi_up")(x_BxTxD)
    h_BxTxF = nn.with_logical_constraint(
      nn.silu(gate_BxTxF) * up_BxTxF, ("activation_batch", "activation_length", "activation_mlp")
    )
    return dense(self.d_model, ("mlp", "embed"), self.out_init_std, "wo")(h_BxTxF)


def _out_init_std(m) -> float:
  """Init std of the projections into the residual stream (W_O, the MLP's wo): GPT-2's
  scaling by the number of residual additions."""
  return m.init_std / math.sqrt(2 * m.num_layers)


def attention_config(m, *, decode: bool = False, linear: bool = False) -> AttentionConfig:
  """The attention layers' config, from the model config `m` and the model's modes."""
  return AttentionConfig(
    num_heads=m.num_heads,
    head_dim=m.head_dim,
    d_model=m.d_model,
    rope_theta=m.rope_theta,
    init_std=m.init_std,
    out_init_std=_out_init_std(m),
    dtype=jnp.dtype(m.dtype),
    attention=m.attention,
    attention_impl=m.attention_impl,
    routing=m.routing,
    num_directions=m.num_directions,
    router_hidden=m.router_hidden,
    router_depth=m.router_depth,
    router_activation=m.router_activation,
    router_temperature=m.router_temperature,
    pooling=m.pooling,
    linear=linear,
    decode=decode,
  )


class Block(nn.Module):
  cfg: ml_collections.ConfigDict
  layer: int
  attn: AttentionConfig  # this block's attention (linearised or decoding: see Transformer)

  @nn.compact
  def __call__(self, x_BxTxD: Array, iv: Interventions, capture: Sequence[str]) -> Array:
    m, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    prefix = f"blocks.{self.layer}"

    def sow(name, value):
      if wants(capture, f"{prefix}.{name}"):
        self.sow("intermediates", f"{prefix}.{name}", value)

    sow("resid_pre", x_BxTxD)
    norm = m.norm == "rms"
    h_BxTxD, _ = RMSNorm(m.norm_eps, dtype, norm, name="attn_norm")(x_BxTxD)
    router_x_BxTxD = h_BxTxD if m.router_input == "normed" else x_BxTxD
    x_BxTxD = x_BxTxD + Attention(self.attn, prefix=f"{prefix}.attn", name="attn")(
      h_BxTxD, router_x_BxTxD, iv.layer(self.layer), capture
    )
    x_BxTxD = nn.with_logical_constraint(x_BxTxD, _RESID_AXES)
    sow("resid_mid", x_BxTxD)
    h_BxTxD, _ = RMSNorm(m.norm_eps, dtype, norm, name="mlp_norm")(x_BxTxD)
    mlp_BxTxD = SwiGLU(m.d_ff, m.d_model, m.init_std, _out_init_std(m), dtype, name="mlp")(h_BxTxD)
    sow("mlp.out", mlp_BxTxD)
    x_BxTxD = nn.with_logical_constraint(x_BxTxD + mlp_BxTxD, _RESID_AXES)
    sow("resid_post", x_BxTxD)
    return x_BxTxD


def _remat(block_cls, policy: str):
  if policy == "none":
    return block_cls
  jax_policy = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}[
    policy
  ]
  # static_argnums counts self: (x, interventions, capture) -> capture is 3.
  return nn.remat(block_cls, policy=jax_policy, static_argnums=(3,))


class Transformer(nn.Module):
  """tokens_BxT -> logits_BxTxV (float32; V = the padded vocab, padded entries at -1e9).

  `decode` and `linear_layers` are modes of the model, set on a copy (`model.clone(decode=
  True)`, as Flax's lm1b decodes with `config.replace(decode=True)`), never passed per call:
  each layer reads its mode from its AttentionConfig. They are not keys of the model config,
  which is what a run trains and saves (config.json); a model in either mode has the same
  parameters as the one trained.
  """

  cfg: ml_collections.ConfigDict
  decode: bool = False  # tokens_BxT continue the sequence held in the "cache" collection
  # The first k layers' attention is ELU+1 linear, with the trained weights (the linearisation
  # analysis, analysis/linearise.py; not for training).
  linear_layers: int = 0

  @nn.compact
  def __call__(
    self, tokens_BxT: Array, interventions: Interventions | None = None, capture: Sequence[str] = ()
  ) -> Array:
    m, dtype = self.cfg, jnp.dtype(self.cfg.dtype)
    iv = interventions if interventions is not None else Interventions()
    V = padded_vocab_size(m)
    embed = nn.Embed(
      V,
      m.d_model,
      dtype=dtype,
      name="embed",
      embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(m.init_std), ("vocab", "embed")
      ),
    )
    x_BxTxD = nn.with_logical_constraint(embed(tokens_BxT), _RESID_AXES)
    block_cls = Block if self.decode else _remat(Block, m.remat)
    attn = attention_config(m, decode=self.decode)
    for l in range(m.num_layers):
      attn_l = dataclasses.replace(attn, linear=l < self.linear_layers)
      x_BxTxD = block_cls(m, l, attn_l, name=f"blocks_{l}")(x_BxTxD, iv, tuple(capture))
    h_BxTxD, inv_rms_BxTx1 = RMSNorm(m.norm_eps, dtype, m.norm == "rms", name="final_norm")(x_BxTxD)
    if wants(capture, "final_norm.scale"):
      self.sow("intermediates", "final_norm.scale", inv_rms_BxTx1)
    logits_BxTxV = embed.attend(h_BxTxD).astype(jnp.float32)  # tied input/output embedding
    if V != m.vocab_size:
      logits_BxTxV = jnp.where(jnp.arange(V) < m.vocab_size, logits_BxTxV, -1e9)
    if wants(capture, "logits"):
      self.sow("intermediates", "logits", logits_BxTxV)
    return logits_BxTxV


def build_model(model_cfg: ml_collections.ConfigDict) -> Transformer:
  """Validates the model config and returns the Linen module (routed or baseline)."""
  validate_model_config(model_cfg)
  return Transformer(ml_collections.FrozenConfigDict(model_cfg))


def forward(
  model: Transformer,
  params,
  tokens_BxT: Array,
  *,
  interventions: Interventions | None = None,
  capture: Sequence[str] = (),
  linear_layers: int = 0,
) -> tuple[Array, dict[str, Array]]:
  """The pure forward pass: (logits_BxTxV, {activation name: array}).

  `params` are unboxed Linen params (no `nn.Partitioned` wrappers needed, but they are accepted).
  `capture` holds names or fnmatch patterns from `interventions.CAPTURE_NAMES`.
  `linear_layers=k` runs `model.clone(linear_layers=k)`: softmax attention in the first k
  layers replaced with ELU+1 linear attention, with the trained weights (the linearisation
  experiment; not for training).
  `tokens_BxT` may be any array-like of ints (e.g. a list of equal-length token lists).
  """
  tokens_BxT = jnp.asarray(tokens_BxT)
  capture = tuple(capture)
  if linear_layers:
    model = model.clone(linear_layers=linear_layers)
  if not capture:
    return model.apply({"params": params}, tokens_BxT, interventions, ()), {}
  logits, state = model.apply(
    {"params": params}, tokens_BxT, interventions, capture, mutable=["intermediates"]
  )
  flat = flax.traverse_util.flatten_dict(state["intermediates"])
  return logits, {path[-1]: values[0] for path, values in flat.items()}


def init_params(model: Transformer, rng: Array, seq_len: int = 8):
  """Random params (unboxed) for `model`. Shapes do not depend on seq_len."""
  variables = model.init(rng, jnp.zeros((1, seq_len), jnp.int32))
  return nn.meta.unbox(variables["params"])


def abstract_params(model: Transformer, seq_len: int = 8):
  """Params as boxed ShapeDtypeStructs (logical axis names kept), nothing allocated."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, seq_len), jnp.int32)))[
    "params"
  ]
