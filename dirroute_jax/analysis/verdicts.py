"""The words of the claims table (analysis/claims.py) and the rules every section's claim rows
share: "yes", "no", or "no difference" (a null result: the measurement does not separate from
its null or control).

Each section's `claim_rows(result, report)` states its own criteria beside the code that
computes the numbers; this module holds only what they have in common.
"""

from __future__ import annotations

from dirroute_jax.analysis import stats

YES, NO, NO_DIFF = "yes", "no", "no difference"

# {claim id: (our value as text, holds?)}: holds? is YES, NO, NO_DIFF or None (not a claim that
# can hold).
Rows = dict[str, tuple[str, "str | None"]]


def interval_verdict(lo: float, hi: float, null: float = 0.0) -> str:
  """The rule for a quantity the paper says is positive, given its 95% interval: "yes" only
  when the interval excludes `null` (zero, or a control's value) on the paper's side, "no"
  when it excludes it on the other, "no difference" when it contains it. The same rule as
  `stats.verdict` (intervals over seeds), in this table's words."""
  null = max(0.0, null)
  return {stats.HOLDS: YES, stats.OPPOSITE: NO}.get(stats.verdict(lo - null, hi - null), NO_DIFF)


def yes_no(ok: bool) -> str:
  return YES if ok else NO


def pct_ci(value: float, ci) -> str:
  """A fraction as a percentage with its interval, to one decimal (the table's precision)."""
  return f"{100 * value:+.1f}%" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
