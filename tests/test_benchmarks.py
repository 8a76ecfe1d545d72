"""benchmarks/step_time.py runs end to end in both modes, says what it is doing as it goes, and
prints tables in exactly the format BENCHMARKS.md shows."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALLEST = [
  "--config.model.num_layers=1",
  "--config.seq_len=16",
  "--config.batch_size=8",
  "--repeats=1",
  "--steps=1",
  "--poolings=causal_mean",
]


def _run(*args):
  return subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "benchmarks", "step_time.py"),
      "--config=" + os.path.join(REPO, "configs", "tiny.py"),
      *SMALLEST,
      *args,
    ],
    capture_output=True,
    text=True,
    env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"},
  )


def _table_headers(text):
  return [l for l in text.splitlines() if l.startswith("| pooling |")]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [["--interleave"], []])
def test_step_time_tables_match_benchmarks_md(mode):
  out = _run(*mode)
  assert out.returncode == 0, out.stderr
  benchmarks_md = open(os.path.join(REPO, "BENCHMARKS.md")).read()
  headers = _table_headers(out.stdout)
  assert len(headers) == 2 and all(h in benchmarks_md for h in headers)
  rows = [l for l in out.stdout.splitlines() if l.startswith("| causal_mean |")]
  assert len(rows) == (4 if mode else 3) + 1  # variants (+ baseline row) and the ratio row
  assert all("| n/a |" in r for r in rows[:-1])  # no MFU and no peak memory on CPU
  assert "compiled and warmed up" in out.stderr and "repeat 1/1" in out.stderr
  assert "1 / 1 / 1" in rows[-1]  # one compile per variant
