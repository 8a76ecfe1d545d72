"""How a section's result is stored in report.json, for every reader of it (the section's own
markdown and figures, report.py, claims.py): a section that did not run, and a section's
routed model.

Results stay plain JSON-ready dicts, because report.json is the persisted format that claims
and seed aggregation read back; the keys below are spelled here and nowhere else.
"""

from __future__ import annotations

import dataclasses

SKIPPED = "skipped"  # the key of a section that did not run, with the reason as its value


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A section that did not run (e.g. regimes with one held-out domain), and why."""
  reason: str


def skipped(result: dict) -> Skipped | None:
  """The section's skip, or None when it ran."""
  return Skipped(result[SKIPPED]) if SKIPPED in result else None


def model(result: dict, name: str = "routed") -> dict | None:
  """One model's entry of a section that measures each model, or None where that model has
  none (a skipped section, or a model the analysis does not apply to: a reason string)."""
  m = result.get("models", {}).get(name)
  return m if isinstance(m, dict) else None


def models(result: dict) -> dict[str, dict]:
  """{name: entry} for the models the section measured (reasons for the others left out)."""
  return {n: m for n, m in result.get("models", {}).items() if isinstance(m, dict)}
