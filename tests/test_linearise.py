"""The linearisation experiment: k = 0 is the trained model exactly; k > 0 changes PPL."""

import pytest

from dirroute_jax.analysis import ablation, linearise
from dirroute_jax.analysis.load import load_workdir


@pytest.mark.slow
def test_linearise_on_trained_workdir(trained_workdir):
  run = load_workdir(trained_workdir)
  result = linearise.linearise(run, num_batches=2)
  reference = ablation.ablation(run, num_batches=2)
  for name, m in result.models.items():
    L = run.models[name].cfg.num_layers
    assert len(m.ppl_by_k) == L + 1
    assert m.ppl_by_k[0] == pytest.approx(reference.models[name].ppl["as_trained"]["all"], rel=1e-5)
    assert m.relative_increase_by_k[0] == 0.0
    assert all(abs(x) > 1e-4 for x in m.relative_increase_by_k[1:])
