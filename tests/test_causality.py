"""The causality audit flags the paper's sequence-mean router and passes the causal variants."""

import os
import subprocess
import sys

import jax
import pytest

from dirroute_jax.analysis.causality import audit_causality
from dirroute_jax.model.transformer import build_model, init_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
  "routing,pooling,causal",
  [(True, "sequence_mean", False), (True, "causal_mean", True), (False, "sequence_mean", True)],
)
def test_audit_verdicts(tiny_cfg, routing, pooling, causal):
  tiny_cfg.model.routing, tiny_cfg.model.pooling = routing, pooling
  model = build_model(tiny_cfg.model)
  result = audit_causality(
    model, init_params(model, jax.random.key(3)), vocab_size=tiny_cfg.model.vocab_size, seq_len=32
  )
  assert result.causal is causal
  assert result.verdict == ("CAUSAL" if causal else "LEAK")
  if not causal:
    assert result.max_change > 100 * result.tolerance


@pytest.mark.parametrize(
  "pooling,code,verdict", [("sequence_mean", 1, "LEAK"), ("causal_mean", 0, "CAUSAL")]
)
@pytest.mark.slow
def test_audit_cli(pooling, code, verdict):
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "audit.py"),
      "--config=" + os.path.join(REPO, "configs", "tiny.py"),
      f"--config.model.pooling={pooling}",
      "--seq_len=32",
    ],
    capture_output=True,
    text=True,
  )
  assert proc.returncode == code, proc.stderr
  lines = proc.stdout.splitlines()
  routed_line = next(l for l in lines if "routed" in l)
  assert routed_line.startswith(verdict)
  assert next(l for l in lines if "baseline" in l).startswith("CAUSAL")


def test_ppl_by_position_buckets_recombine_to_the_overall_perplexity():
  """The position buckets partition the window: their token-weighted losses recombine to the
  loss over all positions that loss_sums gives, and a one-bucket split is that perplexity."""
  import math

  import jax
  import jax.numpy as jnp
  import numpy as np

  from dirroute_jax.analysis import forward as fw
  from dirroute_jax.config import load_config_file
  from dirroute_jax.model.transformer import build_model, init_params

  cfg = load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py"))
  cfg.model.pooling = "sequence_mean"
  model = build_model(cfg.model)
  params = init_params(model, jax.random.PRNGKey(0), 16)
  rng = np.random.default_rng(0)
  batches = [
    {
      "inputs": jnp.asarray(rng.integers(0, 200, (2, 16)), jnp.int32),
      "targets": jnp.asarray(rng.integers(0, 200, (2, 16)), jnp.int32),
      "weights": jnp.asarray(np.arange(16)[None, :] < np.array([[16], [11]]), jnp.float32),
    }
    for _ in range(2)
  ]
  by = fw.ppl_by_position(model, params, batches, buckets=((0, 4), (4, None)))
  whole = fw.ppl_by_position(model, params, batches, buckets=((0, None),))["0+"]
  iv = fw.complete(model.cfg)
  l, t = 0.0, 0.0
  for b in batches:
    l_B, t_B = fw.loss_sums(model, params, b["inputs"], b["targets"], b["weights"], iv)
    l, t = l + float(l_B.sum()), t + float(t_B.sum())
  assert whole == pytest.approx(math.exp(l / t), rel=1e-5)
  n_first, n_rest = 4 * 4, 2 * 12 + 2 * 7  # real tokens in positions 0-3 and 4+
  combined = (n_first * math.log(by["0-3"]) + n_rest * math.log(by["4+"])) / (n_first + n_rest)
  assert combined == pytest.approx(l / t, rel=1e-5)
  assert set(fw.ppl_by_position(model, params, batches)) == {"0-7", "8-63", "64+"}
  assert math.isnan(fw.ppl_by_position(model, params, batches)["64+"])  # 16-token windows
