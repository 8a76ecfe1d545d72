"""Held-out perplexity of every model of the set, overall and per domain."""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.experimental import multihost_utils

from dirroute_jax.train.step import BATCH_KEYS, Trainer


def to_global(trainer: Trainer, host_batch: dict) -> dict:
  """This host's rows -> one global array per key, sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(trainer.batch_sharding,
                                                    np.asarray(host_batch[k]))
          for k in BATCH_KEYS}


def evaluate(trainer: Trainer, state, batches, domains) -> dict[str, float]:
  """`eval/{model}/loss|perplexity`, `eval/{model}/{domain}/perplexity`, `eval/delta/...`."""
  loss_sums, token_sums = {}, {}
  for host_batch in batches:
    out = jax.device_get(trainer.eval_step(state, to_global(trainer, host_batch)))
    domain_B = np.asarray(multihost_utils.process_allgather(host_batch["domain"], tiled=True))
    for name, (loss_B, tokens_B) in out.items():
      for d in np.unique(domain_B[domain_B >= 0]):
        sel = domain_B == d
        key = (name, domains[d])
        loss_sums[key] = loss_sums.get(key, 0.0) + float(loss_B[sel].sum())
        token_sums[key] = token_sums.get(key, 0.0) + float(tokens_B[sel].sum())
  metrics = {}
  for name in trainer.models:
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
      metrics[f"eval/{name}/{domain}/perplexity"] = math.exp(loss)
  if "eval/routed/loss" in metrics and "eval/baseline/loss" in metrics:
    metrics["eval/delta/loss"] = metrics["eval/routed/loss"] - metrics["eval/baseline/loss"]
  return metrics
