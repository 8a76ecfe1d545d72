"""The models a run trains side by side (`cfg.models`), each a variant of `cfg.model`.

Light to import (config and ml_collections only): the seeds aggregation and the launchers name
variants without loading jax. Counting parameters (for the matched baseline's d_ff) needs the
model, so model/params.py is imported only when "matched" is built; params.py never imports
this module back.
"""

from __future__ import annotations

import copy
import functools
import json
import math

import ml_collections

from dirroute_jax.config import ConfigError

# Not a trained model: the sequence_mean routed model evaluated with prefix-only routing (its
# params in a causal_mean twin), the metric `eval/routed_prefix/...` of training's evaluation.
PREFIX_ONLY = "routed_prefix"


def _closest_baseline_d_ff(model_cfg, measure) -> int:
  """The integer d_ff at which `measure(baseline config)` is closest to `measure(routed)`; a
  tie goes to the smaller. Both measures used here (parameters, FLOPs per token) are affine in
  d_ff, so two evaluations give the line and the closest integer is one of the two around the
  exact solution."""
  target = measure(model_variant(model_cfg, "routed"))
  base_cfg = model_variant(model_cfg, "baseline")
  base_cfg.d_ff = 1
  at_1 = measure(base_cfg)
  base_cfg.d_ff = 2
  per_unit = measure(base_cfg) - at_1  # SwiGLU: 3 * d_model * num_layers parameters
  exact = 1 + (target - at_1) / per_unit
  below, above = max(1, math.floor(exact)), max(1, math.ceil(exact))
  return min((below, above), key=lambda f: (abs(at_1 + (f - 1) * per_unit - target), f))


@functools.lru_cache(maxsize=64)
def _matched_d_ff(model_json: str) -> int:
  from dirroute_jax.model.params import count_params  # the model: jax, flax

  return _closest_baseline_d_ff(
    ml_collections.ConfigDict(json.loads(model_json)), lambda m: count_params(m).total_unpadded
  )


def matched_d_ff(model_cfg, seq_len: int | None = None) -> int:
  """d_ff of the parameter-matched baseline ("matched" in MODEL_VARIANTS).

  The rule: the baseline (routing off) with the integer d_ff whose parameter count, vocab
  unpadded, is closest to the routed model's; a tie goes to the smaller d_ff. Only the MLP
  widens (every block by the same amount), so the residual mismatch is at most half of one
  unit of d_ff, 1.5 * d_model * num_layers parameters (`params.format_table` prints it).
  """
  del seq_len  # a parameter count does not depend on the sequence length
  return _matched_d_ff(model_cfg.to_json())


@functools.lru_cache(maxsize=64)
def _flops_matched_d_ff(model_json: str, seq_len: int) -> int:
  from dirroute_jax.model.flops import flops_per_token  # the model: jax, flax

  return _closest_baseline_d_ff(
    ml_collections.ConfigDict(json.loads(model_json)), lambda m: flops_per_token(m, seq_len)
  )


def flops_matched_d_ff(model_cfg, seq_len: int | None = None) -> int:
  """d_ff of the compute-matched baseline ("flops_matched" in MODEL_VARIANTS).

  The rule: the baseline (routing off) with the integer d_ff whose training FLOPs per token at
  `seq_len` (model/flops.py's convention) are closest to the routed model's; a tie goes to the
  smaller d_ff. The parameter-matched baseline spends more compute than the routed model when
  the router runs once per sequence (sequence_mean: its parameters cost FLOPs / T per token),
  so for that pooling the two controls differ; for causal_mean they nearly coincide.
  """
  if seq_len is None:
    raise ConfigError(
      "the compute-matched baseline (flops_matched) needs the training sequence length: "
      "build it with model_configs(cfg), or model_variant(..., seq_len=cfg.seq_len)."
    )
  return _flops_matched_d_ff(model_cfg.to_json(), int(seq_len))


# The models a run can train side by side (`models`), each `model` with these keys overridden;
# a callable value is computed from `model` and the training length. "matched" is the baseline
# with its MLP widened so that its parameter count matches the routed model's (the rule:
# `matched_d_ff`); "flops_matched" so that its training FLOPs per token do (`flops_matched_d_ff`).
MODEL_VARIANTS = {
  "routed": {"routing": True},
  "baseline": {"routing": False},
  "sd": {"routing": False, "attention": "sd"},
  "matched": {"routing": False, "d_ff": matched_d_ff},
  "flops_matched": {"routing": False, "d_ff": flops_matched_d_ff},
}


def model_variant(
  model_cfg: ml_collections.ConfigDict, name: str, *, seq_len: int | None = None
) -> ml_collections.ConfigDict:
  """A copy of `model_cfg` as the named variant (e.g. "baseline": routing off). `seq_len`: the
  training length, which only the compute-matched variant needs."""
  out = copy.deepcopy(model_cfg)
  out.update(
    {k: v(model_cfg, seq_len) if callable(v) else v for k, v in MODEL_VARIANTS[name].items()}
  )
  return out


def model_configs(cfg) -> dict[str, ml_collections.ConfigDict]:
  """The set of models trained side by side (`cfg.models`), each a variant of `cfg.model`."""
  names = [n.strip() for n in cfg.models.split(",") if n.strip()]
  unknown = [n for n in names if n not in MODEL_VARIANTS]
  if not names or unknown or len(set(names)) != len(names):
    raise ConfigError(
      f"models={cfg.models!r}: give distinct names from {sorted(MODEL_VARIANTS)}, comma-separated."
    )
  return {name: model_variant(cfg.model, name, seq_len=cfg.seq_len) for name in names}


def count_pair(model_cfg, names=("routed", "baseline", "matched")) -> dict:
  """{name: params.ParamCount} for the routed model, its baseline (the same config with
  routing off) and the parameter-matched baseline, each as `model_variant` builds it for
  training."""
  from dirroute_jax.model.params import count_params  # the model: jax, flax

  return {name: count_params(model_variant(model_cfg, name)) for name in names}
