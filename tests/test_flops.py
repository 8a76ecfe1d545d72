"""The analytic FLOP count (MFU's numerator) agrees with XLA's cost analysis of the step."""

import os

import jax
import pytest

from dirroute_jax.config import load_config_file
from dirroute_jax.model import flops as model_flops
from dirroute_jax.model.variants import model_configs
from dirroute_jax.train import flops, sharding, step


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["causal_mean", "sequence_mean"])
def test_analytic_flops_match_xla_cost_analysis(tiny_cfg, pooling):
  cfg = tiny_cfg
  cfg.model.pooling, cfg.batch_size, cfg.seq_len = pooling, 8, 64
  trainer = step.make_trainer(cfg, sharding.make_mesh(cfg.mesh, jax.devices()[:1]))
  batch = {
    k: jax.ShapeDtypeStruct(
      (8, 64), "float32" if k == "weights" else "int32", sharding=trainer.batch_sharding
    )
    for k in step.BATCH_KEYS
  }
  cost = trainer.train_step.lower(trainer.abstract_state(), batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  analytic = 8 * 64 * sum(model_flops.flops_per_token(m, 64) for m in model_configs(cfg).values())
  # XLA also counts elementwise work (softmax, norms, Adam), a few percent at this size.
  assert 1.0 <= cost["flops"] / analytic < 1.06


def test_paper_scale_flops_and_peaks():
  cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "433m.py"))
  routed, base = (model_configs(cfg)[n] for n in ("routed", "baseline"))
  # 6N dominates: ~6 * 417M (with the 50304-row unembedding counted as a matmul).
  assert 2.5e9 < model_flops.flops_per_token(base, 1024) < 2.8e9
  # sequence_mean runs the router once per sequence: nearly free per token.
  assert model_flops.flops_per_token(routed, 1024) / model_flops.flops_per_token(base, 1024) < 1.01
  assert model_flops.router_params(routed) == 1536 * 512 + 2 * 512 * 512 + 512 * 48  # no biases
  assert flops.peak_flops_per_device("NVIDIA H100 80GB HBM3") == 989e12
  assert flops.peak_flops_per_device("TPU v5 lite") == 197e12
  assert flops.peak_flops_per_device("cpu") is None


def test_the_compute_matched_baseline_matches_the_routed_models_flops():
  """flops_matched: the baseline's d_ff whose FLOPs per token are the routed model's, to half
  a unit of d_ff; with the router run once per sequence it is far from the parameter-matched
  baseline (which spends ~10% more compute at tiny), with it run per token the two coincide."""
  from dirroute_jax.config import ConfigError
  from dirroute_jax.model.variants import model_variant

  cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "seeds.py"))
  cfg.models = "routed,baseline,matched,flops_matched"
  per_unit = 18 * cfg.model.d_model * cfg.model.num_layers  # 6 x 3 x d_model per layer
  for pooling in ("sequence_mean", "causal_mean"):
    cfg.model.pooling = pooling
    ms = model_configs(cfg)
    fpt = {n: model_flops.flops_per_token(m, cfg.seq_len) for n, m in ms.items()}
    assert abs(fpt["flops_matched"] - fpt["routed"]) <= per_unit / 2
    assert not ms["flops_matched"].routing
  cfg.model.pooling = "sequence_mean"
  ms = model_configs(cfg)
  assert ms["baseline"].d_ff < ms["flops_matched"].d_ff < ms["matched"].d_ff
  cfg.model.pooling = "causal_mean"
  assert model_configs(cfg)["flops_matched"].d_ff == model_configs(cfg)["matched"].d_ff
  with pytest.raises(ConfigError, match="sequence length"):
    model_variant(cfg.model, "flops_matched")
