"""How a section's result is typed, and stored in report.json, for every reader of it (the
section's own markdown, figures and claim rows, report.py, claims.py).

Each analysis returns a frozen dataclass (nested dataclasses for its per-model parts); its
fields are the schema. Readers use attribute access, so a renamed or missing field fails where
the result is built or read back (`from_json`), not minutes into an analysis run, and a type
checker sees every use.

    d = to_json(result)                   # JSON-ready: dicts, lists, str, int, float, None
    result == from_json(type(result), d)  # lossless

Conventions of the stored form, kept from the untyped report.json so that committed reports
still load:
  * A float that is not finite is stored as the string "inf", "-inf" or "nan" (strict JSON has
    no such numbers); `from_json` reads those strings back into a float field.
  * A section, or a model's part of one, that did not run is `Skipped(reason)`, stored as
    {"skipped": reason}. Older reports stored a model's skip as a bare string ("n/a (no
    router)"); a field typed `X | Skipped` reads either.
  * A field that is `None` (a quantity that does not apply, e.g. routing-off accuracy of a model
    without a router) is stored as null, or left out where None is its default; an older
    report's "n/a" string in such a field reads back as None.
  * Keys of an older report that are no longer a field are dropped on reading.
  * A dataclass whose stored keys are not its field names (keys named after models, e.g.
    "baseline_invariant") defines the two static methods `to_stored(fields_dict) -> stored`
    and `from_stored(stored) -> fields_dict`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import numpy as np

SKIPPED = "skipped"  # the key of a section that did not run, with the reason as its value


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A section (or one model's part of it) that did not run, and why: e.g. regimes with one
  held-out domain, or a baseline in a section about the router."""

  reason: str


def skipped(result) -> Skipped | None:
  """The section's skip, or None when it ran (a typed result, or its stored form)."""
  if isinstance(result, Skipped):
    return result
  if isinstance(result, dict) and SKIPPED in result:
    return Skipped(result[SKIPPED])
  return None


def model(result, name: str = "routed"):
  """One model's entry of a section that measures each model (a result with `models`), or
  None where that model has none (a skipped section, or a model the analysis does not apply
  to)."""
  if isinstance(result, Skipped) or result is None:
    return None
  m = result.models.get(name)
  return None if isinstance(m, Skipped) else m


def models(result) -> dict:
  """{name: entry} for the models the section measured (skips of the others left out)."""
  if isinstance(result, Skipped) or result is None:
    return {}
  return {n: m for n, m in result.models.items() if not isinstance(m, Skipped)}


# --- To and from the stored form.

_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def to_json(x):
  """`x` (a result dataclass, or anything inside one) as JSON-ready data."""
  if isinstance(x, Skipped):
    return {SKIPPED: x.reason}
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    # A field at its default None is left out: absent and None read back the same.
    d = {
      f.name: to_json(getattr(x, f.name))
      for f in dataclasses.fields(x)
      if not (f.default is None and getattr(x, f.name) is None)
    }
    return type(x).to_stored(d) if hasattr(type(x), "to_stored") else d
  if isinstance(x, dict):
    return {str(k): to_json(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_json(v) for v in x]
  if isinstance(x, np.ndarray):
    return to_json(x.tolist())
  if isinstance(x, (bool, np.bool_)):
    return bool(x)
  if isinstance(x, (np.floating, float)):
    v = float(x)
    return v if math.isfinite(v) else str(v)
  if isinstance(x, np.integer):
    return int(x)
  return x


class SchemaError(ValueError):
  """Stored data that does not fit the result type (a missing field, a wrong type)."""


def from_json(tp, data, where: str = "result"):
  """`data` (the stored form) read back as type `tp` (a result dataclass, or a field's type:
  float, int, str, bool, Any, list[T], tuple[T, ...], dict[str, T], T | None, A | B). Raises
  SchemaError naming the field that does not fit."""
  if tp is Any or tp is object:
    return data
  origin = typing.get_origin(tp)
  if origin in (typing.Union, types.UnionType):
    return _union(typing.get_args(tp), data, where)
  if tp is Skipped:
    if isinstance(data, str):  # an older report's bare reason ("n/a (...)")
      return Skipped(data)
    if isinstance(data, dict) and SKIPPED in data:
      return Skipped(data[SKIPPED])
    raise SchemaError(f"{where}: not a skip: {data!r:.80}")
  if dataclasses.is_dataclass(tp):
    if not isinstance(data, dict):
      raise SchemaError(f"{where}: expected {tp.__name__} (a JSON object), got {data!r:.80}")
    if hasattr(tp, "from_stored"):
      data = tp.from_stored(data)
    hints = typing.get_type_hints(tp)
    kwargs = {}
    for f in dataclasses.fields(tp):
      if f.name in data:
        kwargs[f.name] = from_json(hints[f.name], data[f.name], f"{where}.{f.name}")
      elif (
        f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and not _optional(hints[f.name])
      ):
        raise SchemaError(f"{where}: no field {f.name!r} ({tp.__name__})")
      elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        kwargs[f.name] = None
    return tp(**kwargs)
  if origin in (list, tuple):
    if not isinstance(data, (list, tuple)):
      raise SchemaError(f"{where}: expected a list, got {data!r:.80}")
    args = typing.get_args(tp)
    if origin is tuple and args and args[-1] is not Ellipsis:
      return tuple(from_json(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data)))
    item = args[0] if args else Any
    out = [from_json(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
    return tuple(out) if origin is tuple else out
  if origin is dict:
    if not isinstance(data, dict):
      raise SchemaError(f"{where}: expected a JSON object, got {data!r:.80}")
    key_tp, value_tp = typing.get_args(tp) or (str, Any)
    return {
      (int(k) if key_tp is int else k): from_json(value_tp, v, f"{where}[{k!r}]")
      for k, v in data.items()
    }
  if tp is float:
    if isinstance(data, str) and data in _NONFINITE:
      return _NONFINITE[data]
    if isinstance(data, (int, float, np.integer, np.floating)) and not isinstance(data, bool):
      return float(data)
  elif tp is bool:
    if isinstance(data, (bool, np.bool_)):
      return bool(data)
  elif tp is int:
    if isinstance(data, (int, np.integer)) and not isinstance(data, bool):
      return int(data)
  elif tp is str:
    if isinstance(data, str):
      return data
  else:
    raise SchemaError(f"{where}: unsupported field type {tp!r}")
  raise SchemaError(f"{where}: expected {tp.__name__}, got {data!r:.80}")


def _optional(tp) -> bool:
  return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(
    tp
  )


def _union(args, data, where):
  if data is None and type(None) in args:
    return None
  if Skipped in args and isinstance(data, dict) and SKIPPED in data:
    return Skipped(data[SKIPPED])  # a skip, whatever else an older report stored beside it
  if isinstance(data, str) and data.startswith("n/a") and type(None) in args:
    return None  # an older report's "n/a" where a quantity does not apply
  errors = []
  for a in args:
    if a is type(None):
      continue
    try:
      return from_json(a, data, where)
    except SchemaError as e:
      errors.append(str(e))
  raise SchemaError("; or ".join(errors) or f"{where}: {data!r:.80} fits none of {args}")
