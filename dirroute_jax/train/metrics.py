"""Metrics out of the training loop: `WORKDIR/metrics.jsonl` and TensorBoard events.

metrics.jsonl holds one JSON object per logged step with at least `step`, `routed/loss` and
`baseline/loss` (and `eval/...` keys when evaluated). On resume, lines past the restored step
are dropped so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np


class MetricsWriter:

  def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    if os.path.exists(self.path):
      kept = [line for line in open(self.path) if line.strip()
              and json.loads(line)["step"] <= resume_step]
      with open(self.path + ".tmp", "w") as f:
        f.writelines(kept)
      os.replace(self.path + ".tmp", self.path)
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:  # TensorBoard events are a convenience; metrics.jsonl is the record
      self._tb = None

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, float) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _scalar(v):
  v = np.asarray(v)
  return float(v) if v.dtype.kind == "f" else int(v)
