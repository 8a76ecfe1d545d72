"""Text helpers shared by every report section's markdown: number formatting, tables, and the
phrases for a held-out sample and a percentage with its interval."""

from __future__ import annotations

import math

import numpy as np


def fmt(v, digits: int = 4) -> str:
  if isinstance(v, str) or v is None:
    return str(v)
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v))
  if isinstance(v, (int, np.integer)):
    return f"{int(v):,}"
  v = float(v)
  if not math.isfinite(v):
    return str(v)
  if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
    return f"{v:.3g}"
  return f"{v:.{digits}g}"


def table(header: list[str], rows: list[list]) -> str:
  cell = lambda c: fmt(c).replace("|", "\\|").replace("\n", "\\n")
  lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def sample(num_batches: int, stride: float | None) -> str:
  """Which held-out batches a number is over: all, or a fixed sample and its interval."""
  if stride is None or stride <= 1.0:
    return f"the whole held-out split ({num_batches} batches)"
  return f"a fixed sample of {num_batches} held-out batches, one every {stride:.3g}"


def pct_ci(value: float, ci=None) -> str:
  text = f"{100 * value:+.2f}%"
  if ci:
    text += f" [{100 * ci[0]:+.2f}%, {100 * ci[1]:+.2f}%]"
  return text
