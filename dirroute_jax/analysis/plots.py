"""Helpers shared by the report's figures; each section draws its own in its analysis module
(`<section>.figures(result) -> {key: Figure}`). Each plot draws one claim beside its null or
control, so a figure never shows the routed model alone. Keys start with the section's name.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only; no display on a training host
import matplotlib.pyplot as plt  # noqa: E402,F401  (the sections draw through plots.plt)
from matplotlib.ticker import MaxNLocator  # noqa: E402


def save(figures: dict, out_dir: str) -> dict[str, str]:
  """Writes OUT_DIR/<key>.png for each figure, closes it; returns {key: path}."""
  paths = {}
  for key, fig in figures.items():
    paths[key] = os.path.join(out_dir, f"{key}.png")
    fig.savefig(paths[key], dpi=110, bbox_inches="tight")
    plt.close(fig)
  return paths


def integer_ticks(axis, n: int) -> None:
  """Ticks of a layer / head / k axis (0..n-1): every integer when there are few, else integers
  only (matplotlib's default puts ticks at 0.5 steps on a short axis)."""
  if n <= 16:
    axis.set_ticks(range(n))
  else:
    axis.set_major_locator(MaxNLocator(integer=True))


def legend_outside(ax, **kwargs) -> None:
  """The legend to the right of the axes, where it cannot hide a point (savefig's tight bbox
  keeps it in the file)."""
  ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)
