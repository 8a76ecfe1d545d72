"""Metrics out of the training loop: `WORKDIR/metrics.jsonl` and TensorBoard events.

metrics.jsonl holds one JSON object per logged step with at least `step`, `routed/loss` and
`baseline/loss` (and `eval/...` keys when evaluated); a second write for the same step (the
final evaluation) is merged into that step's row. On resume, lines past the restored step
are dropped so the file reads as one uninterrupted run, and TensorBoard is told to discard its
events past that step too (`purge_step`). The file is rewritten whole on each write (it is
small), which works the same on local disk and on object stores (gs://) that cannot append.
"""

from __future__ import annotations

import json
import math

import numpy as np
from absl import logging
from etils import epath

from dirroute_jax import workdir as workdir_lib

# A metrics key is its parts joined by "/", a model's name first within its scope:
#   <model>/<stat>  delta/<stat>  eval/<model>/<stat>  eval/<model>/<domain>/<stat>  perf/<stat>
# Built with key() and read back with nest(), never by slicing strings.
EVAL = "eval"
DELTA = "delta"
# What a delta compares, first minus second, when both are trained: the paper's routed model
# and its baseline. Also the order models are shown in (the others follow by name).
DELTA_PAIR = ("routed", "baseline")


def key(*parts: str) -> str:
  return "/".join(parts)


def flat(tree: dict, *scope: str) -> dict:
  """{key(*scope, *path): value} of a nested dict of metrics, in insertion order."""
  out = {}
  for name, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, *scope, name))
    else:
      out[key(*scope, name)] = value
  return out


def nest(metrics: dict) -> dict:
  """The flat row as nested dicts: nest({"eval/routed/loss": x})["eval"]["routed"]["loss"]."""
  out = {}
  for k, value in metrics.items():
    *path, leaf = k.split("/")
    node = out
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value
  return out


def delta_pair(models) -> tuple[str, str] | None:
  """DELTA_PAIR if both its models are among `models`, else None: no delta metrics."""
  return DELTA_PAIR if all(n in models for n in DELTA_PAIR) else None


def display_order(names) -> list[str]:
  """`names` as progress lines and summaries list them: DELTA_PAIR's first, then by name."""
  return sorted(
    names, key=lambda n: (DELTA_PAIR.index(n) if n in DELTA_PAIR else len(DELTA_PAIR), n)
  )


class MetricsFileError(ValueError):
  """metrics.jsonl has a damaged line that is not the last one."""


class MetricsWriter:
  def __init__(self, workdir: str, *, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.path = workdir_lib.metrics(workdir)
    self._rows: list[dict] = []
    self._tb = None
    if not enabled:
      return
    if self.path.exists():
      self._rows = [r for r in read_rows(self.path) if r["step"] <= resume_step]
      self._flush()
    # TensorBoard events locally only; metrics.jsonl is the record.
    if not workdir_lib.is_remote(workdir):
      try:
        from tensorboardX import SummaryWriter

        # purge_step: TensorBoard drops the events a crashed run logged past the checkpoint.
        self._tb = SummaryWriter(
          str(workdir_lib.tensorboard(workdir)), purge_step=resume_step + 1 if resume_step else None
        )
      except ImportError:
        self._tb = None

  def eval_row(self, step: int) -> dict:
    """The `eval/...` metrics already written for `step` ({} if none)."""
    return {
      k: v for r in self._rows if r["step"] == step for k, v in r.items() if k.startswith("eval/")
    }

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    if self._rows and self._rows[-1]["step"] == row["step"]:
      self._rows[-1].update(row)
    else:
      self._rows.append(row)
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
    tmp.write_text("".join(json.dumps(r) + "\n" for r in self._rows))
    tmp.replace(self.path)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_rows(path: epath.PathLike) -> list[dict]:
  """The rows of a metrics.jsonl. A damaged last line (a write cut short) is dropped with a
  warning; a damaged line before it is an error naming the file and line."""
  path = epath.Path(path)
  lines = path.read_bytes().decode("utf-8", errors="replace").splitlines()
  numbered = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
  rows = []
  for n, (lineno, line) in enumerate(numbered):
    try:
      row = json.loads(line)
      if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        raise ValueError("not a JSON object with an integer 'step'")
    except ValueError as e:
      if n == len(numbered) - 1:
        logging.warning("%s:%d is damaged (%s); dropping that last line.", path, lineno, e)
        print(f"WARNING: {path}:{lineno} (the last line) is damaged; dropped it.", flush=True)
        break
      raise MetricsFileError(
        f"{path}:{lineno} is damaged ({e}); fix or delete that line (each line is one "
        "logged step) and rerun."
      ) from None
    rows.append(row)
  return rows


def _scalar(v):
  v = np.asarray(v)
  return float(v) if v.dtype.kind == "f" else int(v)
