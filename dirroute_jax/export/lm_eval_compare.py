"""Several models of one workdir through lm-evaluation-harness, side by side and paired.

Every model answers the same documents, so the routed - baseline difference is taken per
document (paired) and its interval is the Student-t interval of those differences, which is
much narrower than comparing two independent standard errors when the models agree on most
documents. Used by launch/lm_eval.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dirroute_jax.analysis import stats
from dirroute_jax.export import lm_eval_adapter as adapter

BASELINE = "baseline"


def parse_model_specs(spec: str) -> list[tuple[str, str, str]]:
  """ "routed,routed:off,baseline" -> [(label, model, routing)]; routing defaults to as_trained."""
  out = []
  for item in (s.strip() for s in spec.split(",") if s.strip()):
    model, _, routing = item.partition(":")
    out.append((item, model, routing or "as_trained"))
  if not out or len({label for label, _, _ in out}) != len(out):
    raise ValueError(
      f"--models={spec!r}: give distinct models, e.g. routed,baseline or "
      "routed,routed:off,baseline."
    )
  return out


def _metric_names(task_result: dict) -> list[str]:
  """'acc,none' style keys that have a standard error beside them."""
  return [
    k
    for k in task_result
    if "," in k
    and not k.split(",")[0].endswith("_stderr")
    and f"{k.split(',')[0]}_stderr,{k.split(',', 1)[1]}" in task_result
  ]


def compare(
  run,
  tasks: Sequence[str],
  model_specs: Sequence[tuple[str, str, str]],
  *,
  include_path: str | None = None,
  limit: int | float | None = None,
  num_fewshot: int | None = None,
  batch_size: int = 16,
  max_length: int | None = None,
  log=print,
) -> dict:
  """Evaluates each (label, model, routing) of a loaded workdir on `tasks`.

  Returns {"models": {label: {task: {metric: value, metric_stderr: se}}}, "paired": {label:
  {task: {metric: t_interval of (label - baseline) per document}}}, ...}. Each model's lm-eval
  result is also kept whole under "lm_eval".
  """
  from lm_eval import evaluator  # pylint: disable=g-import-not-at-top
  from lm_eval.tasks import TaskManager  # pylint: disable=g-import-not-at-top

  manager = TaskManager(include_path=include_path) if include_path else TaskManager()
  lms = {
    label: adapter.DirrouteLM(
      run=run, model=model, routing=routing, batch_size=batch_size, max_length=max_length
    )
    for label, model, routing in model_specs
  }  # resolve all first: bad specs fail early
  out = {
    "workdir": str(run.path),
    "step": int(run.step),
    "tasks": list(tasks),
    "models": {},
    "paired": {},
    "lm_eval": {},
    "limit": limit,
    "num_fewshot": num_fewshot,
  }
  per_doc = {}
  for label, lm in lms.items():
    log(f"Evaluating {label} on {', '.join(tasks)} ...")
    res = evaluator.simple_evaluate(
      model=lm,
      tasks=list(tasks),
      task_manager=manager,
      limit=limit,
      num_fewshot=num_fewshot,
      log_samples=True,
      bootstrap_iters=1000,
    )
    out["models"][label] = {}
    per_doc[label] = {}
    for task, values in res["results"].items():
      metrics = {}
      for key in _metric_names(values):
        name, filt = key.split(",", 1)
        metrics[name] = float(values[key])
        se = values[f"{name}_stderr,{filt}"]
        metrics[f"{name}_stderr"] = float(se) if se not in (None, "N/A") else math.nan
      out["models"][label][task] = metrics
    for task, samples in res.get("samples", {}).items():
      per_doc[label][task] = {s["doc_id"]: s for s in samples}
    out["lm_eval"][label] = {
      k: res[k] for k in ("results", "versions", "n-shot", "configs") if k in res
    }
  if BASELINE in per_doc:
    for label in per_doc:
      if label == BASELINE:
        continue
      out["paired"][label] = {}
      for task, docs in per_doc[label].items():
        base = per_doc[BASELINE].get(task, {})
        common = sorted(set(docs) & set(base))
        metrics = {}
        for name in out["models"][label].get(task, {}):
          if name.endswith("_stderr") or not common or name not in docs[common[0]]:
            continue
          diffs = [float(docs[d][name]) - float(base[d][name]) for d in common]
          metrics[name] = stats.t_interval(diffs)
        out["paired"][label][task] = metrics
  return out


def format_table(result: dict) -> str:
  """Markdown: one row per task and metric, one column per model (value +- stderr), then each
  model's paired difference from the baseline with its 95% interval."""
  labels = list(result["models"])
  paired = [l for l in labels if l in result["paired"]]
  head = ["task", "metric", *labels, *(f"{l} - {BASELINE} [95% CI]" for l in paired)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  tasks = sorted({t for m in result["models"].values() for t in m})
  for task in tasks:
    first = next(result["models"][l][task] for l in labels if task in result["models"][l])
    for name in (n for n in first if not n.endswith("_stderr")):
      row = [task, name]
      for l in labels:
        m = result["models"][l].get(task, {})
        row.append(f"{m[name]:.4f} +- {m[f'{name}_stderr']:.4f}" if name in m else "-")
      for l in paired:
        d = result["paired"][l].get(task, {}).get(name)
        row.append(
          f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] (n={d['n']})" if d else "-"
        )
      lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)
