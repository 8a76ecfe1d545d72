"""Learning-rate check: does the seeds' ranking of the models survive tuning each one's LR?

The seed runs train every model with one shared peak LR. Here the same seeds are trained again
at other peak LRs (`launch/seeds.py --out=OUT_LR --config.optim.peak_lr=...`, final LR a tenth
of it, as in configs/seeds.py), each model ("arm") takes the LR that gave it the lowest mean
held-out log-perplexity over the seeds, and the arms are compared best against best, paired by
seed (same initial weights and batches under every LR).

Inputs are experiment directories laid out as experiments/seeds.py writes them; each run's LR
is read from its own final.json, not from the directory's name.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable

import numpy as np

from dirroute_jax.analysis.markdown import table
from dirroute_jax.experiments import seeds as seeds_lib

LR_KEY = "optim.peak_lr"
FINAL_LR_KEY = "optim.final_lr"  # the cosine schedule's end; its ratio to the peak must be one
AGAINST = ("baseline", "matched")  # each compared with "routed", the paper's side


def collect(out_dirs: Iterable[str], pooling: str, seeds: Iterable[int]) -> dict[float, dict]:
  """{peak LR: {seed: final.json}} for `seeds` under `pooling` in every one of `out_dirs`.

  Every LR must have finished every seed (a best-LR choice over different seeds would not be
  paired), with the same final/peak LR ratio; two directories with one LR are an error.
  """
  seeds = sorted(int(s) for s in seeds)
  by_lr: dict[float, dict] = {}
  for out_dir in out_dirs:
    runs = seeds_lib.collect(out_dir, [pooling], seeds).get(pooling, {})
    missing = [s for s in seeds if s not in runs]
    if missing:
      raise FileNotFoundError(
        f"{out_dir}: seed(s) {missing} under {pooling} not finished; train them with "
        "launch/seeds.py (same --out and flags) or drop the directory."
      )
    lrs = {float(final["config"][LR_KEY]) for final in runs.values()}
    if len(lrs) != 1:
      raise ValueError(f"{out_dir}: its runs have different peak LRs {sorted(lrs)}.")
    lr = lrs.pop()
    ratios = {float(final["config"][FINAL_LR_KEY]) / lr for final in runs.values()}
    if by_lr:
      ratios.add(_final_over_peak(by_lr))
    if max(ratios) - min(ratios) > 1e-9 * max(ratios):
      raise ValueError(
        f"{out_dir}: final LR / peak LR differs between the directories ({sorted(ratios)}); "
        "scale --config.optim.final_lr with the peak."
      )
    if lr in by_lr:
      raise ValueError(f"{out_dir}: peak LR {lr:g} is already given by another directory.")
    by_lr[lr] = runs
  return dict(sorted(by_lr.items()))


def _final_over_peak(by_lr: dict[float, dict]) -> float:
  lr, runs = next(iter(by_lr.items()))
  return float(next(iter(runs.values()))["config"][FINAL_LR_KEY]) / lr


def _log_ppl(final: dict, model: str) -> float:
  return math.log(final["eval"][seeds_lib.metric_key(model, seeds_lib.PRIMARY_SCOPE)])


def check(by_lr: dict[float, dict]) -> dict:
  """Per arm: held-out PPL per LR and seed, the best LR (lowest mean log PPL over seeds); then
  routed vs each other arm, each at its own best LR, and the same at every shared LR."""
  lrs = list(by_lr)
  seeds = sorted(next(iter(by_lr.values())))
  arms = seeds_lib.trained_models(next(iter(by_lr.values())))
  grid = {
    arm: {f"{lr:g}": {str(s): math.exp(_log_ppl(by_lr[lr][s], arm)) for s in seeds} for lr in lrs}
    for arm in arms
  }
  best = {}
  for arm in arms:
    means = [float(np.mean([_log_ppl(by_lr[lr][s], arm) for s in seeds])) for lr in lrs]
    i = int(np.argmin(means))
    best[arm] = {"lr": lrs[i], "at_edge": i in (0, len(lrs) - 1) and len(lrs) > 1}

  def compare(lr_a: float, lr_b: float, b: str) -> dict:
    return seeds_lib.interval_entry(
      {s: _log_ppl(by_lr[lr_b][s], b) - _log_ppl(by_lr[lr_a][s], "routed") for s in seeds}
    )

  against = [b for b in AGAINST if b in arms]
  return {
    "method": (
      "Each arm's peak LR is the one with the lowest mean held-out log-perplexity (all "
      f"domains) over the seeds; the final LR is {_final_over_peak(by_lr):.3g} x the peak in every "
      "run. Routed vs each other arm "
      "at its own best LR, paired by seed: the seeds' interval, p values and verdict "
      f"(experiments/seeds.py, margin +/-{100 * seeds_lib.EQUIVALENCE_MARGIN:g}%), and the "
      "same at each shared LR."
    ),
    "pooling": next(iter(next(iter(by_lr.values())).values()))["pooling"],
    "seeds": seeds,
    "lrs": lrs,
    "perplexity": grid,
    "best": {arm: {"lr": b["lr"], "at_edge": b["at_edge"]} for arm, b in best.items()},
    "best_vs_best": {b: compare(best["routed"]["lr"], best[b]["lr"], b) for b in against},
    "shared_lr": {f"{lr:g}": {b: compare(lr, lr, b) for b in against} for lr in lrs},
  }


def to_markdown(res: dict) -> str:
  lrs = [f"{lr:g}" for lr in res["lrs"]]
  seeds = [str(s) for s in res["seeds"]]
  lines = [f"## Learning-rate check ({res['pooling']}, seeds {', '.join(seeds)})", ""]
  lines += [res["method"], ""]
  rows = []
  for arm, by_lr in res["perplexity"].items():
    cells = []
    for lr in lrs:
      ppl = [by_lr[lr][s] for s in seeds]
      mean = math.exp(float(np.mean(np.log(ppl))))
      cells.append(" / ".join(f"{p:.2f}" for p in ppl) + f" (geo-mean {mean:.2f})")
    b = res["best"][arm]
    rows.append([arm, *cells, f"{b['lr']:g}" + (" (edge of the grid)" if b["at_edge"] else "")])
  lines += [
    "Held-out perplexity, seed " + " / ".join(seeds) + ":",
    "",
    table(["arm", *(f"peak LR {lr}" for lr in lrs), "best LR"], rows),
    "",
  ]
  head = ["routed vs", "LRs (routed, other)", "mean PPL reduction", *seeds_lib.INTERVAL_COLUMNS]
  rows = [
    [b, f"best: {res['best']['routed']['lr']:g}, {res['best'][b]['lr']:g}"] + seeds_lib.row_cells(e)
    for b, e in res["best_vs_best"].items()
  ]
  rows += [
    [b, f"shared: {lr}, {lr}"] + seeds_lib.row_cells(e)
    for lr, by_b in res["shared_lr"].items()
    for b, e in by_b.items()
  ]
  lines += [table(head, rows), ""]
  return "\n".join(lines)


def write_outputs(
  out_dirs: Iterable[str], pooling: str, seeds: Iterable[int], out: str
) -> dict[str, str]:
  """lr_check.json and lr_check.md in `out`, from the finished runs of `out_dirs`."""
  res = check(collect(out_dirs, pooling, seeds))
  os.makedirs(out, exist_ok=True)
  paths = {"json": os.path.join(out, "lr_check.json"), "markdown": os.path.join(out, "lr_check.md")}
  with open(paths["json"], "w") as f:
    json.dump(res, f, indent=1)
  with open(paths["markdown"], "w") as f:
    f.write(to_markdown(res))
  return paths
