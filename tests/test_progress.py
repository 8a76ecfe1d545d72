"""The run's first lines: which attention kernel it uses, and a progress line that reports
steady-state throughput only (the window holding compilation is labelled, not averaged in)."""

import json
import math
import os

import pytest

from dirroute_jax.train.loop import _progress_line, train


def test_warmup_window_is_labelled_not_reported_as_throughput():
  m = {"routed/loss": 3.0, "baseline/loss": 3.1}
  line = _progress_line(10, 100, m, float("nan"), 4096, warmup_s=42.0, warmup_steps=10)
  assert "warming up: first 10 step(s) took 42.0s; throughput from the next line on" in line
  assert "tok/s" not in line and "ETA" not in line
  line = _progress_line(20, 100, m, 0.5, 4096)
  assert "8,192 tok/s" in line and "ETA 0m40s" in line and "warming" not in line


@pytest.mark.slow
def test_run_says_its_attention_kernel_and_times_only_steady_windows(tiny_cfg, tmp_path):
  cfg = tiny_cfg
  cfg.data.source, cfg.data.cache_dir = "synthetic", str(tmp_path / "cache")
  cfg.model.vocab_size = 257
  cfg.data.tokenizer = "bytes"
  cfg.steps, cfg.batch_size, cfg.seq_len, cfg.log_every = 6, 8, 32, 2
  cfg.eval_every, cfg.checkpoint_every, cfg.eval_batches = 0, 0, 1
  lines = []
  train(cfg, str(tmp_path / "workdir"), log=lines.append)
  said = "Attention: XLA (unfused softmax) (auto: cuDNN needs an NVIDIA GPU; the devices are cpu)"
  progress = [l for l in lines if l.startswith("step ")]
  assert said in lines and lines.index(said) < lines.index(progress[0])
  assert len(progress) == 3
  assert "warming up: first 2 step(s)" in progress[0] and "tok/s" not in progress[0]
  assert all("tok/s" in l for l in progress[1:])
  rows = [json.loads(r) for r in open(os.path.join(tmp_path, "workdir", "metrics.jsonl"))]
  by_step = {r["step"]: r for r in rows}
  assert "perf/tokens_per_sec" not in by_step[2]
  assert math.isfinite(by_step[4]["perf/tokens_per_sec"])
