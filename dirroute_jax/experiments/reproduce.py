"""The reproduction run: one routed/baseline pair per router pooling trained with one config
(same seed, same batches), the interpretability report of each, and the claims table with the
paper's number beside ours under each pooling.

Layout of the output directory OUT:
  OUT/<pooling>/workdir/    the run's workdir
  OUT/<pooling>/report/     report.json, report.md and the plots (`analysis.report`)
  OUT/claims.md             the claims table and the leak-vs-gain table (`analysis.claims`)
  OUT/timings.json          seconds spent training and interpreting each pooling

Beside experiments/seeds.py (N seeds per pooling, intervals over seeds): launch/reproduce.py
and launch/seeds.py only parse flags and call these.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Iterable

from dirroute_jax.analysis import claims
from dirroute_jax.analysis.load import load_workdir
from dirroute_jax.analysis.report import run_analyses, write_report
from dirroute_jax.cli import exit_if_stopped, exit_on_train_error
from dirroute_jax.train.loop import train


def reproduce(base_cfg, out_dir: str, poolings: Iterable[str]) -> tuple[str, dict]:
  """Trains (or resumes) each pooling's pair, writes its report, then OUT/claims.md and
  OUT/timings.json; returns claims.md's text and the timings. A stopped training exits the
  process as launch/train.py does (`cli.exit_if_stopped`), before its analyses."""
  t0 = time.time()
  reports, timings = {}, {}
  for pooling in poolings:
    cfg = copy.deepcopy(base_cfg)
    cfg.model.pooling = pooling
    workdir = os.path.join(out_dir, pooling, "workdir")
    t = time.time()
    with exit_on_train_error():
      summary = train(cfg, workdir)
    exit_if_stopped(summary, skipped=f"the {pooling} report and claims.md")
    timings[f"{pooling}/train_sec"] = round(time.time() - t, 1)
    t = time.time()
    run = load_workdir(workdir)
    reports[pooling] = run_analyses(run)
    write_report(reports[pooling], run, os.path.join(out_dir, pooling, "report"))
    timings[f"{pooling}/interpret_sec"] = round(time.time() - t, 1)
  timings["total_sec"] = round(time.time() - t0, 1)
  text = "\n\n".join([claims.claims_table(reports), claims.leak_vs_gain(reports)])
  with open(os.path.join(out_dir, "claims.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(out_dir, "timings.json"), "w") as f:
    json.dump(timings, f, indent=1)
  return text, timings
