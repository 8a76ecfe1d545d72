"""Metrics out of the training loop: `WORKDIR/metrics.jsonl` and TensorBoard events.

metrics.jsonl holds one JSON object per logged step with at least `step`, `routed/loss` and
`baseline/loss` (and `eval/...` keys when evaluated). On resume, lines past the restored step
are dropped so the file reads as one uninterrupted run. The file is rewritten whole on each
write (it is small), which works the same on local disk and on object stores (gs://) that
cannot append.
"""

from __future__ import annotations

import json
import math

from etils import epath
import numpy as np


class MetricsWriter:

  def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._lines: list[str] = []
    self._tb = None
    if not enabled:
      return
    if self.path.exists():
      self._lines = [line + "\n" for line in self.path.read_text().splitlines()
                     if line.strip() and json.loads(line)["step"] <= resume_step]
      self._flush()
    if "://" not in str(workdir):  # TensorBoard events locally; metrics.jsonl is the record
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
      except ImportError:
        self._tb = None

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    self._lines.append(json.dumps(row) + "\n")
    self._flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, float) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def text(self, step: int, tag: str, text: str) -> None:
    """A TensorBoard text summary (markdown), e.g. model samples; not in metrics.jsonl."""
    if self._tb is not None:
      self._tb.add_text(tag, text, step)
      self._tb.flush()

  def hparams(self, hparams: dict, metric_names: list[str]) -> None:
    """The run's config in TensorBoard's HPARAMS tab, against the named scalars."""
    if self._tb is not None:
      from tensorboardX.summary import hparams as hparams_summary
      for summary in hparams_summary(hparams, {name: 0.0 for name in metric_names}):
        self._tb.file_writer.add_summary(summary)
      self._tb.flush()

  def _flush(self) -> None:
    tmp = self.path.parent / (self.path.name + ".tmp")
    tmp.write_text("".join(self._lines))
    tmp.replace(self.path)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _scalar(v):
  v = np.asarray(v)
  return float(v) if v.dtype.kind == "f" else int(v)
