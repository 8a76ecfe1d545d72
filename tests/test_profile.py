"""The run says how close to the edge it is (the compiled step's memory, before the first step)
and traces a window of steps with jax.profiler (config.profile_steps)."""

import glob
import gzip
import json
import os
import subprocess
import sys
import types

import pytest

from dirroute_jax.config import ConfigError, parse_profile_steps
from dirroute_jax.train import plan as plan_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_profile_steps_parsing():
  assert parse_profile_steps("") is None
  assert parse_profile_steps("10:13") == (10, 13)
  for bad in ("5", "5:5", "0:3", "a:b", "7:3"):
    with pytest.raises(ConfigError, match="profile_steps=.*START:STOP"):
      parse_profile_steps(bad)


class _Device:
  platform = "gpu"

  def __init__(self, limit):
    self.limit = limit

  def memory_stats(self):
    return {"bytes_limit": self.limit}


def test_memory_report_warns_above_90_percent():
  mem = types.SimpleNamespace(
    argument_size_in_bytes=60,
    output_size_in_bytes=60,
    alias_size_in_bytes=60,
    temp_size_in_bytes=30,
    generated_code_size_in_bytes=2,
  )
  compiled = types.SimpleNamespace(memory_analysis=lambda: mem)  # peak 92 bytes
  line, warn = plan_lib.memory_report(compiled, _Device(100))
  assert warn and "(92%, from the compiler's memory analysis)" in line and "WARNING" in line
  line, warn = plan_lib.memory_report(compiled, _Device(200))
  assert not warn and "(46%" in line and "WARNING" not in line


@pytest.mark.slow
def test_run_prints_its_memory_and_traces_the_window(tmp_path):
  workdir = tmp_path / "w"
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(REPO, "launch", "train.py"),
      "--config=" + os.path.join(REPO, "configs", "tiny.py"),
      f"--workdir={workdir}",
      f"--compilation_cache={tmp_path}/xla",
      f"--config.data.cache_dir={tmp_path}/cache",
      "--config.data.tokenizer=bytes",
      "--config.seq_len=32",
      "--config.batch_size=8",
      "--config.eval_batches=1",
      "--config.steps=6",
      "--config.log_every=2",
      "--config.eval_every=0",
      "--config.checkpoint_every=0",
      "--config.profile_steps=3:5",
    ],
    capture_output=True,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  out = proc.stdout
  # Before the first step: the compiled step's peak per device (CPU has no limit to compare).
  assert out.index("Memory: the compiled train step needs ") < out.index("step 2/6")
  assert "cpu reports no memory limit to compare with" in out
  assert f"Profile of steps 3..4 written to {workdir}/profile" in out
  traces = glob.glob(str(workdir / "profile" / "plugins" / "profile" / "*" / "*.trace.json.gz"))
  assert len(traces) == 1 and glob.glob(os.path.join(os.path.dirname(traces[0]), "*.xplane.pb"))
  events = json.load(gzip.open(traces[0]))["traceEvents"]
  steps = sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train")
  assert steps == [3, 4]  # exactly the window's steps, each annotated once
