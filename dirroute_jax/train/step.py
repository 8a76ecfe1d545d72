"""The joint train step: every model of the set (normally {routed, baseline}) on ONE batch, in
ONE jitted executable, each with its own AdamW state.

State layout (a plain dict, so Orbax and analysis tools read it without our classes):

  {"step": int32[], "models": {name: {"params": ..., "opt_state": ...}}}

Batches: {"inputs": int32[B, T], "targets": int32[B, T], "weights": float32[B, T]}.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from dirroute_jax.model import kernels
from dirroute_jax.model.losses import cross_entropy_sums
from dirroute_jax.model.transformer import Transformer, abstract_params, build_model, forward
from dirroute_jax.model.variants import model_configs
from dirroute_jax.train import metrics as metrics_lib
from dirroute_jax.train import sharding
from dirroute_jax.train.optimizer import learning_rate_schedule, make_optimizer

BATCH_KEYS = ("inputs", "targets", "weights")


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Everything the loop needs that is derived from the config and the mesh, built once."""

  cfg: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  models: dict[str, Transformer]
  optimizers: dict[str, optax.GradientTransformation]
  state_shardings: dict
  batch_sharding: jax.sharding.NamedSharding
  rules: tuple
  init_state: Callable  # rng -> state (jitted, sharded)
  train_step: Callable  # (state, batch) -> (state, metrics) (jitted, donates state)
  eval_step: Callable  # (state, batch) -> {name: (loss_sum_B, tokens_B)}

  def abstract_state(self):
    """ShapeDtypeStructs with target shardings: what a checkpoint restores into."""
    with jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh):  # shapes only: see OnMesh
      shapes = jax.eval_shape(self.init_state, jax.random.key(0))
    return jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
      shapes,
      self.state_shardings,
    )


class OnMesh:
  """A jitted function that is traced, lowered and run under its mesh (`jax.set_mesh`).

  Under the mesh the model's logical sharding constraints bind (outside one, Flax drops them
  silently, and XLA's propagation alone once gave q, k and v different shardings), and the
  attention kernel is picked for the mesh's devices (model/kernels.py), so a plan compiled for
  compile-only accelerators is the program the run executes. Anything else (`_cache_size`,
  `eval_shape`, ...) is the jitted function's.
  """

  def __init__(self, jitted, mesh: jax.sharding.Mesh):
    self._jitted, self._mesh = jitted, mesh

  def _on_mesh(self):
    try:
      return jax.set_mesh(self._mesh)
    except ValueError:  # called inside a trace (jax.eval_shape, an outer jit): it has a mesh
      return contextlib.nullcontext()

  def __call__(self, *args, **kwargs):
    with self._on_mesh():
      return self._jitted(*args, **kwargs)

  def lower(self, *args, **kwargs):
    with self._on_mesh():
      return self._jitted.lower(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self._jitted, name)


ROUTER_STATS = ("router/mean", "router/frac_below_0.1", "router/frac_above_0.9")


def _router_stats(captured: dict) -> dict:
  r = jnp.stack([v for k, v in sorted(captured.items()) if k.endswith(".attn.r")])
  return dict(zip(ROUTER_STATS, (r.mean(), (r < 0.1).mean(), (r > 0.9).mean())))


class LossAux(NamedTuple):
  """What a model's loss function returns beside the summed loss of a micro-batch."""

  tokens: jax.Array  # real (weighted) target tokens
  router: dict  # ROUTER_STATS of the micro-batch; {} for a model without routing


class Sums(NamedTuple):
  """One model's totals over the micro-batches of a step (the gradient-accumulation carry)."""

  grads: Any  # summed gradients of the summed token losses, like the params
  loss: jax.Array  # summed token losses
  tokens: jax.Array
  router: dict  # ROUTER_STATS averaged over micro-batches; {} without routing

  @classmethod
  def zeros(cls, params, routing: bool) -> Sums:
    zero = jnp.zeros((), jnp.float32)
    return cls(
      jax.tree.map(jnp.zeros_like, params),
      zero,
      zero,
      {k: zero for k in ROUTER_STATS} if routing else {},
    )

  def add(self, grads, loss_sum, aux: LossAux, micro_batches: int) -> Sums:
    return Sums(
      jax.tree.map(jnp.add, self.grads, grads),
      self.loss + loss_sum,
      self.tokens + aux.tokens,
      jax.tree.map(lambda a, b: a + b / micro_batches, self.router, aux.router),
    )


def make_trainer(cfg, mesh: jax.sharding.Mesh) -> Trainer:
  rules = sharding.LOGICAL_AXIS_RULES
  sharding.check_batch(cfg.batch_size, cfg.grad_accum_steps, mesh)
  # The attention kernel is decided here, once, for the devices the step is compiled for.
  model_cfgs = {
    name: kernels.with_kernel(mc, mesh.devices.flat[0]) for name, mc in model_configs(cfg).items()
  }
  models = {name: build_model(mc) for name, mc in model_cfgs.items()}
  optimizers = {name: make_optimizer(cfg.optim, cfg.steps) for name in models}
  schedule = learning_rate_schedule(cfg.optim, cfg.steps)
  replicated = sharding.replicated(mesh)

  # Shardings from abstract values: params by their logical names, optimizer moments like
  # their params, counters replicated.
  state_shardings = {"step": replicated, "models": {}}
  for name, model in models.items():
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):  # traced as the step is (OnMesh)
      boxed = abstract_params(model)
    sharding.check_divisible(boxed, mesh, name)
    p_sh = sharding.logical_shardings(boxed, mesh)
    unboxed = nn.meta.unbox(boxed)
    opt_sh = sharding.optimizer_shardings(
      jax.eval_shape(optimizers[name].init, unboxed), unboxed, p_sh, replicated
    )
    state_shardings["models"][name] = {"params": p_sh, "opt_state": opt_sh}
  batch_sh = sharding.batch_sharding(mesh)

  def init_state(rng):
    state = {"step": jnp.zeros((), jnp.int32), "models": {}}
    for name, model in models.items():
      # Same key for every model: the shared weights of the pair start identical.
      params = nn.meta.unbox(model.init(rng, jnp.zeros((1, 8), jnp.int32))["params"])
      state["models"][name] = {"params": params, "opt_state": optimizers[name].init(params)}
    return state

  def loss_sums(name, params, micro):
    capture = ("blocks.*.attn.r",) if model_cfgs[name].routing else ()
    logits, captured = forward(models[name], params, micro["inputs"], capture=capture)
    loss_sum_B, tokens_B = cross_entropy_sums(logits, micro["targets"], micro["weights"])
    return loss_sum_B.sum(), LossAux(tokens_B.sum(), _router_stats(captured) if capture else {})

  def train_step(state, batch):
    with nn.logical_axis_rules(rules):
      A = cfg.grad_accum_steps
      # Micro-batch a takes rows a, a+A, a+2A, ...: every device keeps its own rows in every
      # micro-batch, so accumulation never moves data between devices.
      micro_batches = jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(
          x.reshape((x.shape[0] // A, A) + x.shape[1:]).swapaxes(0, 1),
          jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES)),
        ),
        batch,
      )
      params = {n: s["params"] for n, s in state["models"].items()}
      grad_fns = {
        n: jax.value_and_grad(lambda p, mb, n=n: loss_sums(n, p, mb), has_aux=True) for n in models
      }

      def accumulate(carry, micro):
        out = {}
        for n in models:
          (loss_sum, aux), grads = grad_fns[n](params[n], micro)
          out[n] = carry[n].add(grads, loss_sum, aux, A)
        return out, None

      zero = {n: Sums.zeros(params[n], model_cfgs[n].routing) for n in models}
      sums, _ = jax.lax.scan(accumulate, zero, micro_batches)

      new_state = {"step": state["step"] + 1, "models": {}}
      per_model = {}
      lr = schedule(state["step"])
      for n in models:
        tokens = jnp.maximum(sums[n].tokens, 1.0)
        grads = jax.tree.map(lambda g: g / tokens, sums[n].grads)  # mean over all real tokens  # noqa: B023
        updates, opt_state = optimizers[n].update(grads, state["models"][n]["opt_state"], params[n])
        new_state["models"][n] = {
          "params": optax.apply_updates(params[n], updates),
          "opt_state": opt_state,
        }
        loss = sums[n].loss / tokens
        per_model[n] = {
          "loss": loss,
          "perplexity": jnp.exp(loss),
          "grad_norm": optax.tree.norm(grads),
          "lr": lr,
          "tokens": tokens,
          **sums[n].router,
        }
      if pair := metrics_lib.delta_pair(models):
        first, second = (per_model[n] for n in pair)
        per_model[metrics_lib.DELTA] = {
          "loss": first["loss"] - second["loss"],
          "perplexity": first["perplexity"] - second["perplexity"],
        }
      return new_state, metrics_lib.flat(per_model)

  def eval_step(state, batch):
    with nn.logical_axis_rules(rules):
      out = {}
      for n, model in models.items():
        logits, _ = forward(model, state["models"][n]["params"], batch["inputs"])
        out[n] = cross_entropy_sums(logits, batch["targets"], batch["weights"])
      return out

  batch_shardings = {k: batch_sh for k in BATCH_KEYS}
  return Trainer(
    cfg=cfg,
    mesh=mesh,
    models=models,
    optimizers=optimizers,
    state_shardings=state_shardings,
    batch_sharding=batch_sh,
    rules=rules,
    init_state=OnMesh(jax.jit(init_state, out_shardings=state_shardings), mesh),
    train_step=OnMesh(
      jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
      ),
      mesh,
    ),
    eval_step=OnMesh(
      jax.jit(eval_step, in_shardings=(state_shardings, batch_shardings), out_shardings=replicated),
      mesh,
    ),
  )
