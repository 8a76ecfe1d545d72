"""The claims table fills every row from real reports (here: the tiny trained fixture)."""

from dirroute_jax.analysis import claims
from dirroute_jax.analysis.load import load_workdir
from dirroute_jax.analysis.report import run_analyses


def test_claims_table_from_reports(trained_workdir):
  run = load_workdir(trained_workdir)
  report = run_analyses(run, log=lambda *a: None)
  md = claims.claims_table({"causal_mean": report, "again": report})
  lines = md.splitlines()
  assert len(lines) == 2 + len(claims.CLAIMS) + 1
  for line in lines[2:-1]:
    assert "n/a" not in line, line
  assert "CAUSAL" in md
  leak = claims.leak_vs_gain({"causal_mean": report})
  assert "| causal_mean | CAUSAL |" in leak and "0.0000 |" in leak
