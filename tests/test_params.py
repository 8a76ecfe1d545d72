"""Parameter accounting: the paper's 433M numbers come out of our code (METHOD.md §1)."""

import os
import subprocess
import sys

import pytest

from dirroute_jax.config import load_config_file
from dirroute_jax.model import params
from dirroute_jax.model.variants import count_pair, matched_d_ff, model_variant

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def counts_433m():
  return count_pair(load_config_file(os.path.join(REPO, "configs", "433m.py")).model)


@pytest.mark.slow
def test_433m_matches_paper(counts_433m):
  routed, baseline = counts_433m["routed"], counts_433m["baseline"]
  assert routed.by_component["routers"] == 12 * 1_336_880 == 16_042_560
  assert routed.by_component["directions"] == 12 * 12 * 4 * 128 == 73_728
  assert baseline.by_component["routers"] == baseline.by_component["directions"] == 0
  assert baseline.total_unpadded == pytest.approx(417.0e6, rel=0.005)
  assert baseline.total == pytest.approx(417.0e6, rel=0.005)  # padded to 50304 rows
  assert routed.total_unpadded == pytest.approx(433.1e6, rel=0.005)
  overhead = 100 * routed.routing / baseline.total_unpadded
  assert routed.routing == 16_116_288
  assert overhead == pytest.approx(3.86, abs=0.05)
  # Everything but routing is shared parameter for parameter.
  for comp in ("embedding", "attention", "mlp", "norms"):
    assert routed.by_component[comp] == baseline.by_component[comp]
  # Exact architecture arithmetic: embedding 50257x1536, per layer 4*D^2 + 3*D*F + 2*D.
  D, F, L = 1536, 4096, 12
  assert baseline.total_unpadded == 50257 * D + L * (4 * D * D + 3 * D * F + 2 * D) + D
  assert baseline.padded_vocab_rows == (50304 - 50257) * D


@pytest.mark.parametrize("name", ["tiny", "small", "433m"])
def test_matched_baseline_has_the_routed_models_parameter_count(name):
  """The rule in variants.matched_d_ff: the closest integer d_ff, so the mismatch is at most half
  of one unit of d_ff (3 * d_model * num_layers parameters per unit), and no neighbour is
  closer. Counted with eval_shape: nothing is allocated, even for 433M."""
  model_cfg = load_config_file(os.path.join(REPO, "configs", f"{name}.py")).model
  counts = count_pair(model_cfg)
  routed, baseline, matched = counts["routed"], counts["baseline"], counts["matched"]
  d_ff = matched_d_ff(model_cfg)
  per_unit = 3 * model_cfg.d_model * model_cfg.num_layers
  gap = abs(matched.total_unpadded - routed.total_unpadded)
  assert gap <= per_unit / 2
  assert matched.routing == 0 and d_ff > model_cfg.d_ff
  assert matched.by_component["mlp"] == baseline.by_component["mlp"] * d_ff // model_cfg.d_ff
  for comp in ("embedding", "attention", "norms"):
    assert matched.by_component[comp] == baseline.by_component[comp]
  for neighbour in (d_ff - 1, d_ff + 1):
    wider = model_variant(model_cfg, "baseline")
    wider.d_ff = neighbour
    assert abs(params.count_params(wider).total_unpadded - routed.total_unpadded) >= gap


def test_matched_baseline_433m_numbers(counts_433m):
  assert counts_433m["matched"].total_unpadded - counts_433m["routed"].total_unpadded == -25_152
  model_cfg = load_config_file(os.path.join(REPO, "configs", "433m.py")).model
  assert matched_d_ff(model_cfg) == 4387
  assert model_variant(model_cfg, "matched").d_ff == 4387 and model_cfg.d_ff == 4096


def test_every_config_builds():
  for name in sorted(os.listdir(os.path.join(REPO, "configs"))):
    if name.endswith(".py"):
      cfg = load_config_file(os.path.join(REPO, "configs", name))
      counts = count_pair(cfg.model)
      assert counts["routed"].total > counts["baseline"].total > 0, name
      for key in ("routing", "pooling", "num_directions", "router_temperature"):
        assert key in cfg.model, (name, key)
      for key in (
        "seed",
        "steps",
        "batch_size",
        "seq_len",
        "log_every",
        "eval_every",
        "checkpoint_every",
      ):
        assert key in cfg, (name, key)
      assert "source" in cfg.data and all(a in cfg.mesh for a in ("data", "fsdp", "tensor"))


def test_params_cli_prints_table():
  out = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "params.py"),
      "--config=" + os.path.join(REPO, "configs", "433m.py"),
    ],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert "16,042,560" in out and "73,728" in out and "416,971,776" in out
  assert "3.865%" in out
  assert "matched baseline (d_ff 4387): -25,152 params vs routed" in out
