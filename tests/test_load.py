"""Loading a workdir for analysis reproduces the training run's numbers exactly."""

import json
import os

import jax
import numpy as np
import optax
import pytest

from dirroute_jax.analysis.load import load_workdir
from dirroute_jax.model.transformer import forward


@pytest.mark.slow
def test_analysis_forward_reproduces_training_eval(trained_workdir):
  run = load_workdir(trained_workdir)
  assert run.step == 80 and set(run.models) == {"routed", "baseline"}
  assert run.models["routed"].cfg.routing and not run.models["baseline"].cfg.routing
  rows = [json.loads(l) for l in open(os.path.join(trained_workdir, "metrics.jsonl"))]
  final = [r for r in rows if r["step"] == 80 and "eval/routed/loss" in r][-1]
  for name in ("routed", "baseline"):
    apply = jax.jit(lambda p, t, n=name: forward(run.models[n], p, t)[0])
    loss_sum = tokens = 0.0
    for batch in run.data.eval_batches(run.cfg.eval_batches):
      logits = apply(run.params[name], batch["inputs"])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
      loss_sum += float((np.asarray(ce) * batch["weights"]).sum())
      tokens += float(batch["weights"].sum())
    assert abs(loss_sum / tokens - final[f"eval/{name}/loss"]) < 1e-5
  assert run.tokenizer.decode(run.tokenizer.encode("The capital")) == "The capital"
  # Held-out data is tokenized with the run's own tokenizer, never a re-derived one.
  assert run.data.tokenizer is run.tokenizer
