"""Held-out perplexity of every model of the set, overall and per domain, over the whole held-out
split by default (`eval_batches` = 0).

A routed model trained with the paper's non-causal `sequence_mean` router is also scored with
prefix-only routing: the same parameters in a model built with `pooling="causal_mean"`, so each
position's routing sees only the tokens a generating model would have seen. That is the number a
`sequence_mean` model can deliver as a causal LM; its distance to the as-trained perplexity is the
measured leak (keys `eval/routed_prefix/...`). Training and the analyses (causality report,
claims table) use the same `prefix_model` and the same `perplexity_metrics`.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from dirroute_jax.model.losses import cross_entropy_sums
from dirroute_jax.model.transformer import Transformer, build_model, forward
from dirroute_jax.model.variants import PREFIX_ONLY
from dirroute_jax.train import sharding
from dirroute_jax.train.metrics import DELTA, DELTA_PAIR, EVAL, key
from dirroute_jax.train.step import BATCH_KEYS, Trainer


def to_global(trainer: Trainer, host_batch: dict) -> dict:
  """This host's rows -> one global array per key, sharded over the batch axes."""
  return {
    k: jax.make_array_from_process_local_data(trainer.batch_sharding, np.asarray(host_batch[k]))
    for k in BATCH_KEYS
  }


def prefix_model(model_cfg) -> Transformer | None:
  """The causal twin of a `sequence_mean` routed model (same parameter tree), else None."""
  if not (model_cfg.routing and model_cfg.pooling == "sequence_mean"):
    return None
  cfg = ml_collections.ConfigDict(model_cfg.to_dict())  # a mutable copy: model.cfg is frozen
  cfg.pooling = "causal_mean"
  return build_model(cfg)


def _loss_sums_fn(model: Transformer, params, inputs_BxT, targets_BxT, weights_BxT):
  logits_BxTxV, _ = forward(model, params, inputs_BxT)
  return cross_entropy_sums(logits_BxTxV, targets_BxT, weights_BxT)


_loss_sums = jax.jit(_loss_sums_fn, static_argnums=(0,))


@functools.cache
def _sharded_loss_sums(model: Transformer, mesh, rules):
  """`_loss_sums` on the training mesh, outputs replicated so every host can read them."""

  def fn(params, inputs_BxT, targets_BxT, weights_BxT):
    with nn.logical_axis_rules(rules):
      return _loss_sums_fn(model, params, inputs_BxT, targets_BxT, weights_BxT)

  return jax.jit(fn, out_shardings=sharding.replicated(mesh))


def _eval_fns(models: dict[str, Transformer]) -> dict[str, tuple[Transformer, str]]:
  """{metric name: (model to run, name of the params it runs with)}: the set plus, for a
  sequence_mean routed model, its prefix-routing twin on the same params."""
  out = {name: (model, name) for name, model in models.items()}
  if "routed" in models:
    twin = prefix_model(models["routed"].cfg)
    if twin is not None:
      out[PREFIX_ONLY] = (twin, "routed")
  return out


def perplexity_metrics(loss_sums: dict, token_sums: dict, names) -> dict[str, float]:
  """`eval/{name}/loss|perplexity|tokens`, `eval/{name}/{domain}/perplexity`, `eval/delta/loss`
  from {(name, domain): loss sum} and {(name, domain): tokens}."""
  metrics = {}
  for name in names:
    keys = [k for k in loss_sums if k[0] == name]
    total_loss = sum(loss_sums[k] for k in keys)
    total_tokens = sum(token_sums[k] for k in keys)
    if not total_tokens:
      continue
    metrics[f"eval/{name}/loss"] = total_loss / total_tokens
    metrics[f"eval/{name}/perplexity"] = math.exp(metrics[f"eval/{name}/loss"])
    metrics[f"eval/{name}/tokens"] = total_tokens
    for _, domain in keys:
      loss = loss_sums[(name, domain)] / max(token_sums[(name, domain)], 1.0)
      metrics[f"eval/{name}/{domain}/loss"] = loss
      metrics[f"eval/{name}/{domain}/perplexity"] = math.exp(loss)
  losses = [metrics.get(key(EVAL, n, "loss")) for n in DELTA_PAIR]
  if None not in losses:
    metrics[key(EVAL, DELTA, "loss")] = losses[0] - losses[1]
  return metrics


def _accumulate(loss_sums, token_sums, name, domain_B, loss_B, tokens_B, domains):
  loss_B, tokens_B = np.asarray(loss_B, np.float64), np.asarray(tokens_B, np.float64)
  for d in np.unique(domain_B[domain_B >= 0]):
    sel = domain_B == d
    key = (name, domains[d])
    loss_sums[key] = loss_sums.get(key, 0.0) + float(loss_B[sel].sum())
    token_sums[key] = token_sums.get(key, 0.0) + float(tokens_B[sel].sum())


def evaluate(trainer: Trainer, state, batches, domains) -> dict[str, float]:
  """Training's evaluation (sharded, every host): see `perplexity_metrics`, plus
  `eval/routed_prefix/...` for a sequence_mean routed model and `eval/batches`."""
  fns = _eval_fns(trainer.models)
  extra = {n: f for n, f in fns.items() if n not in trainer.models}
  loss_sums, token_sums, num_batches = {}, {}, 0
  for host_batch in batches:
    num_batches += 1
    batch = to_global(trainer, host_batch)
    out = dict(trainer.eval_step(state, batch))
    for name, (model, params_of) in extra.items():
      out[name] = _sharded_loss_sums(model, trainer.mesh, trainer.rules)(
        state["models"][params_of]["params"], batch["inputs"], batch["targets"], batch["weights"]
      )
    out = jax.device_get(out)
    domain_B = np.asarray(multihost_utils.process_allgather(host_batch["domain"], tiled=True))
    for name, (loss_B, tokens_B) in out.items():
      _accumulate(loss_sums, token_sums, name, domain_B, loss_B, tokens_B, domains)
  metrics = perplexity_metrics(loss_sums, token_sums, fns)
  metrics["eval/batches"] = num_batches
  return metrics


def evaluate_params(
  models: dict[str, Transformer], params: dict, batches, domains, *, per_window: dict | None = None
) -> dict[str, float]:
  """The same metrics for loaded params on one host (the analyses' entry point).

  `per_window`, when given, is filled with {name: (loss_sum_N, tokens_N, domain_N)} over the
  real held-out windows (for intervals over windows)."""
  fns = _eval_fns(models)
  loss_sums, token_sums, num_batches = {}, {}, 0
  windows = {name: [] for name in fns}
  for batch in batches:
    num_batches += 1
    domain_B = np.asarray(batch["domain"])
    for name, (model, params_of) in fns.items():
      loss_B, tokens_B = jax.device_get(
        _loss_sums(model, params[params_of], batch["inputs"], batch["targets"], batch["weights"])
      )
      _accumulate(loss_sums, token_sums, name, domain_B, loss_B, tokens_B, domains)
      real_B = domain_B >= 0
      windows[name].append(
        (
          np.asarray(loss_B, np.float64)[real_B],
          np.asarray(tokens_B, np.float64)[real_B],
          domain_B[real_B],
        )
      )
  if per_window is not None:
    for name, parts in windows.items():
      per_window[name] = tuple(
        np.concatenate([p[i] for p in parts]) if parts else np.zeros(0) for i in range(3)
      )
  metrics = perplexity_metrics(loss_sums, token_sums, fns)
  metrics["eval/batches"] = num_batches
  return metrics
