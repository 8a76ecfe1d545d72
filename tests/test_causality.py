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
