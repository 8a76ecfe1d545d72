"""AdamW with the paper's schedule and a separate learning-rate group for routing parameters.

- cosine decay peak_lr -> final_lr after linear warmup (the paper: 3e-4 -> 3e-5, 500 steps);
- global-norm gradient clipping over the whole model, before the per-group updates;
- routing parameters (routers and directions) at `routing_lr_scale` x the base LR (paper: 0.5);
- weight decay on matrices only. Excluded: norm scales, biases, and the directions, which the
  forward renormalises (decay would only shrink their length and so raise their effective LR).
"""

from __future__ import annotations

import jax
import optax


def is_routing_param(path: tuple[str, ...]) -> bool:
  return "router" in path or path[-1] == "directions"


def _path_names(path) -> tuple[str, ...]:
  return tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)


def learning_rate_schedule(optim_cfg, total_steps: int) -> optax.Schedule:
  warmup = min(optim_cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=optim_cfg.peak_lr,
    warmup_steps=warmup,
    decay_steps=max(total_steps, warmup + 1),
    end_value=optim_cfg.final_lr,
  )


def make_optimizer(optim_cfg, total_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(optim_cfg, total_steps)

  def decay_mask(params):
    return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim >= 2 and _path_names(path)[-1] != "directions", params
    )

  def labels(params):
    return jax.tree_util.tree_map_with_path(
      lambda path, _: "routing" if is_routing_param(_path_names(path)) else "base", params
    )

  def adamw(lr_scale: float) -> optax.GradientTransformation:
    return optax.adamw(
      lambda step: lr_scale * schedule(step),
      b1=optim_cfg.b1,
      b2=optim_cfg.b2,
      eps=optim_cfg.eps,
      weight_decay=optim_cfg.weight_decay,
      mask=decay_mask,
    )

  return optax.chain(
    optax.clip_by_global_norm(optim_cfg.grad_clip),
    optax.multi_transform(
      {"base": adamw(1.0), "routing": adamw(optim_cfg.routing_lr_scale)}, labels
    ),
  )
