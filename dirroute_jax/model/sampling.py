"""Text generation from a trained model: temperature and top-k sampling (greedy at
temperature 0), deterministic for a seed.

How each model is run:
- A model whose routing is causal (`pooling="causal_mean"`, and every baseline) decodes
  incrementally: a cache holds each layer's keys and values and the running sum of the router's
  input, so a new token costs one position of attention over the cache and O(1) in the
  sequence length for the router (prefix sum / count). The prompt is one chunk, then one token
  per step inside a `lax.scan`.
- A `pooling="sequence_mean"` router averages the whole sequence, so each new token changes
  the routing of every earlier position: nothing can be cached. That model re-pools the prefix
  at every step, i.e. it runs a full forward over the whole prefix per new token (O(T) per
  token, and one compilation per prefix length). Its samples are what the non-causal model
  does when it is only shown the prefix, which is not how it was trained.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dirroute_jax.model.transformer import Transformer, forward

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Sample:
  tokens: list[int]  # the generated tokens (the prompt excluded)
  logits_NxV: np.ndarray  # float32 logits each generated token was drawn from
  incremental: bool  # False: the prefix was re-run in full for every token


def is_incremental(model: Transformer) -> bool:
  """Whether `model` can decode with a cache (everything but a sequence_mean router)."""
  return not model.cfg.routing or model.cfg.pooling == "causal_mean"


def sample(
  model: Transformer,
  params,
  prompt_tokens: Sequence[int],
  *,
  max_new_tokens: int,
  temperature: float = 1.0,
  top_k: int = 0,
  seed: int = 0,
  incremental: bool | None = None,
) -> Sample:
  """Generates `max_new_tokens` tokens after `prompt_tokens` (at least one token).

  temperature 0 is greedy decoding; top_k > 0 samples among the k most likely tokens only.
  The same (params, prompt, settings, seed) give the same tokens. `incremental=None` picks
  the cache when the model allows it (see the module docstring); False forces a full forward
  over the prefix at every step (the reference the cached path is tested against).
  """
  if len(prompt_tokens) == 0:
    raise ValueError("sampling needs a prompt of at least one token.")
  if temperature < 0 or top_k < 0 or max_new_tokens < 1:
    raise ValueError(
      f"need temperature >= 0, top_k >= 0 and max_new_tokens >= 1 (got "
      f"{temperature}, {top_k}, {max_new_tokens})."
    )
  if incremental is None:
    incremental = is_incremental(model)
  elif incremental and not is_incremental(model):
    raise ValueError("a sequence_mean router cannot decode incrementally; use incremental=None.")
  prompt_1xP = jnp.asarray([list(prompt_tokens)], jnp.int32)
  key = jax.random.key(seed)
  settings = dict(
    max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=int(top_k)
  )
  if incremental:
    tokens_N, logits_NxV = _generate_cached(model, params, prompt_1xP, key, **settings)
  else:
    tokens_N, logits_NxV = _generate_full(model, params, prompt_1xP, key, **settings)
  return Sample(
    [int(t) for t in np.asarray(tokens_N)], np.asarray(logits_NxV, np.float32), bool(incremental)
  )


@functools.partial(jax.jit, static_argnames=("temperature", "top_k"))
def _pick(logits_BxV: Array, key: Array, temperature: float, top_k: int) -> Array:
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV.astype(jnp.float32) / temperature
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature", "top_k"))
def _generate_cached(model, params, prompt_1xP, key, *, max_new_tokens, temperature, top_k):
  decoder = model.clone(decode=True)

  def run(cache, tokens_1xT):
    logits_1xTxV, state = decoder.apply(
      {"params": params, "cache": cache}, tokens_1xT, mutable=["cache"]
    )
    return state["cache"], logits_1xTxV[:, -1]

  # The cache's capacity is the length of the sequence that creates it; start it empty.
  capacity_1xC = jnp.zeros((1, prompt_1xP.shape[1] + max_new_tokens), jnp.int32)
  shapes = jax.eval_shape(
    lambda: decoder.apply({"params": params}, capacity_1xC, mutable=["cache"])[1]["cache"]
  )
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  cache, logits_1xV = run(cache, prompt_1xP)

  def step(carry, i):
    cache, logits_1xV = carry
    token_1 = _pick(logits_1xV, jax.random.fold_in(key, i), temperature, top_k)
    cache, next_logits_1xV = run(cache, token_1[:, None])
    return (cache, next_logits_1xV), (token_1[0], logits_1xV[0])

  _, (tokens_N, logits_NxV) = jax.lax.scan(step, (cache, logits_1xV), jnp.arange(max_new_tokens))
  return tokens_N, logits_NxV


@functools.partial(jax.jit, static_argnames=("model",))
def _last_logits(model, params, tokens_1xT):
  return forward(model, params, tokens_1xT)[0][:, -1]


def _generate_full(model, params, prompt_1xP, key, *, max_new_tokens, temperature, top_k):
  tokens_1xT, picked, logits = prompt_1xP, [], []
  for i in range(max_new_tokens):
    logits_1xV = _last_logits(model, params, tokens_1xT)
    token_1 = _pick(logits_1xV, jax.random.fold_in(key, i), temperature, top_k)
    tokens_1xT = jnp.concatenate([tokens_1xT, token_1[:, None]], axis=1)
    picked.append(token_1[0])
    logits.append(logits_1xV[0])
  return jnp.stack(picked), jnp.stack(logits)
