"""The interpretability report: run the analyses on a workdir, write report.json, report.md
(the paper's value beside ours and beside a null or control) and PNG plots.

    results = run_analyses(run, ["causality", "ablation", ...])
    write_report(results, run, out_dir)

Orchestration only. Each section is its analysis module: the function that computes its
result (a frozen dataclass, `analysis/result.py`), `markdown(result)`, where it has plots
`figures(result)`, and where it tests the paper's claims `claim_rows(result, report)`
(assembled by claims.py). A section that did not run (`result.Skipped`) is rendered here, as
its reason, and drawn never.

In memory a report is {"workdir", "step", "config", "data", "timings_sec", section name: typed
result}; report.json is its stored form (`result.to_json`), and `load_sections` reads one back.
Every reader (markdown, figures, claims) accepts either form of a section.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple

from dirroute_jax import workdir as workdir_lib
from dirroute_jax.analysis import (
  ablation,
  causality,
  directions,
  factual,
  induction,
  linearise,
  plots,
  regimes,
  result,
  spectral,
  steering,
)
from dirroute_jax.analysis.load import Workdir
from dirroute_jax.analysis.markdown import table


class Section(NamedTuple):
  """One report section: `run(workdir, **options) -> result`, the module that renders it
  (`markdown(result) -> str`; `figures(result) -> {key: Figure}` where it has plots;
  `claim_rows(result, report)` where it tests claims) and its result's type (a frozen
  dataclass, `analysis/result.py`)."""

  run: Callable[..., Any]
  module: ModuleType
  result_type: type

  def load(self, stored):
    """The typed result of its stored form (a result already typed, or a skip, as it is)."""
    if not isinstance(stored, dict):
      return stored
    return result.from_json(self.result_type | result.Skipped, stored, self.module.__name__)

  def markdown(self, r) -> str:
    r = self.load(r)
    skip = result.skipped(r)
    return skip.reason if skip else self.module.markdown(r)

  def figures(self, r) -> dict:
    r = self.load(r)
    # causality and steering have no plot: their modules define no `figures`.
    if result.skipped(r) or not hasattr(self.module, "figures"):
      return {}
    return self.module.figures(r)

  def claim_rows(self, r, report: dict) -> dict:
    """{claim id: (our value, holds?)} of this section ({} when it has none or was skipped)."""
    r = self.load(r)
    if r is None or result.skipped(r) or not hasattr(self.module, "claim_rows"):
      return {}
    return self.module.claim_rows(r, report)


# In report order.
SECTIONS: dict[str, Section] = {
  "causality": Section(causality.causality_report, causality, causality.Causality),
  "ablation": Section(ablation.ablation, ablation, ablation.Ablation),
  "factual": Section(factual.factual, factual, factual.Factual),
  "induction": Section(induction.induction, induction, induction.Induction),
  "regimes": Section(regimes.regimes, regimes, regimes.Regimes),
  "directions": Section(directions.directions, directions, directions.Directions),
  "steering": Section(steering.steering, steering, steering.Steering),
  "spectral": Section(spectral.spectral, spectral, spectral.Spectral),
  "linearise": Section(linearise.linearise, linearise, linearise.Linearise),
}
ANALYSES: dict[str, Callable[..., Any]] = {name: s.run for name, s in SECTIONS.items()}


def load_sections(report: dict) -> dict:
  """`report` (a report.json, or a report in memory) with every section as its typed result;
  a stored section that does not fit its type raises result.SchemaError naming the field."""
  return {k: SECTIONS[k].load(v) if k in SECTIONS else v for k, v in report.items()}


def data_summary(run: Workdir) -> dict:
  """The corpus and tokenizer the analyses ran on (content fingerprints, token counts), and the
  ones the workdir recorded at training time."""
  trained_on, _ = workdir_lib.read_data_fingerprint(run.path)  # damaged: warned when loading
  now = run.data.record()
  return {
    "evaluated_on": now,
    "trained_on": trained_on,
    "same_as_training": None
    if trained_on is None
    else (
      trained_on.get("corpus") == now["corpus"] and trained_on.get("tokenizer") == now["tokenizer"]
    ),
    "eval_batches": run.data.num_eval_batches,
  }


def run_analyses(run: Workdir, names=None, *, log=print, options: dict | None = None) -> dict:
  """Runs the named analyses (default all); `options[name]` are keyword arguments for one."""
  names = list(ANALYSES) if names is None else list(names)
  unknown = [n for n in names if n not in ANALYSES]
  if unknown:
    raise ValueError(f"unknown analyses {unknown}; choose from {list(ANALYSES)}.")
  options = options or {}
  results = {
    "workdir": os.path.abspath(run.path),
    "step": run.step,
    "config": json.loads(run.cfg.to_json_best_effort()),
    "data": data_summary(run),
    "timings_sec": {},
  }
  for name in names:
    t0 = time.time()
    results[name] = ANALYSES[name](run, **options.get(name, {}))
    results["timings_sec"][name] = round(time.time() - t0, 2)
    log(f"  {name}: {results['timings_sec'][name]:.1f} s")
  return results


def write_report(results: dict, run: Workdir, out_dir: str) -> dict[str, str]:
  """Writes report.json, report.md and the plots; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, "report.json"), "md": os.path.join(out_dir, "report.md")}
  with open(paths["json"], "w") as f:
    json.dump(result.to_json(results), f, indent=1)
  figures = plots.save(make_figures(results), out_dir)
  with open(paths["md"], "w") as f:
    f.write(render_markdown(results, run, figures))
  paths.update(figures)
  return paths


def make_figures(results: dict) -> dict:
  """{key: matplotlib Figure} for every section of `results` (a report.json) that has a plot;
  the caller closes them."""
  figures = {}
  for name, section in SECTIONS.items():
    if results.get(name) is not None:
      figures.update(section.figures(results[name]))
  return figures


def section_markdown(name: str, r) -> str:
  """Section NAME's markdown body for its result `r` (its reason, when it was skipped)."""
  return SECTIONS[name].markdown(r)


def render_markdown(results: dict, run: Workdir, figures: dict[str, str]) -> str:
  m = run.cfg.model
  out = [
    f"# Interpretability report: `{results['workdir']}` (step {results['step']})",
    "",
    f"Model: {m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads x "
    f"{m.head_dim}, K={m.num_directions}, pooling `{m.pooling}`, vocab {m.vocab_size}; "
    f"trained {results['step']} steps of {run.cfg.batch_size} x {run.cfg.seq_len} tokens "
    f"on `{run.cfg.data.source}` data. The paper's model is 433M parameters trained on "
    "2.6B tokens: compare directions of effects, not magnitudes.",
    "",
  ]
  if "data" in results:
    out += [_data(results["data"]), ""]
  for name in SECTIONS:
    if name in results:
      out += [f"## {name}", "", section_markdown(name, results[name]), ""]
      for key, path in figures.items():
        if key.startswith(name):
          out += [f"![{key}]({os.path.basename(path)})", ""]
  out += [
    "## Timings",
    "",
    table(["analysis", "seconds"], [[k, v] for k, v in results["timings_sec"].items()]),
    "",
  ]
  return "\n".join(out)


def _data(d: dict) -> str:
  now = d["evaluated_on"]
  tokens = now.get("tokens", {})
  domains = sorted({dom for per in tokens.values() for dom in per})
  rows = [
    [split] + [per.get(dom, 0) for dom in domains] + [sum(per.values())]
    for split, per in tokens.items()
  ]
  same = {
    None: "no record in the workdir",
    True: "yes",
    False: "NO: numbers are on a different corpus or tokenizer than training's",
  }[d["same_as_training"]]
  return "\n".join(
    [
      f"Corpus fingerprint `{now['corpus']}`, tokenizer `{now['tokenizer']}` (same as at "
      f"training: {same}); held-out split: {now.get('eval_windows')} windows in "
      f"{d['eval_batches']} batches. Tokens:",
      "",
      table(["split"] + domains + ["all"], rows),
    ]
  )
