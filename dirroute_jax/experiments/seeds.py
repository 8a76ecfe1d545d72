"""Seeds: each router pooling trained with N seeds, every run training the routed model, its
baseline and the parameter-matched baseline (or the variants named by `models`) in one jitted
step on the same batches; held-out perplexity compared with paired confidence intervals over
seeds.

Layout of the output directory OUT:
  OUT/<pooling>/seed_<s>/             the run's workdir (metrics.jsonl, checkpoints, tokenizer)
  OUT/<pooling>/seed_<s>/final.json   final held-out metrics; its presence marks the seed done
  OUT/seeds.json, seeds.md, ppl_vs_step.png   (`write_outputs`)

A seed sets the initial weights and the order of the training batches (data/pipeline.py), and
the pooling changes only the router, so under one seed both poolings train their baselines
identically: differences between poolings are paired by seed too.

Beside experiments/reproduce.py (one seed per pooling, the claims table): launch/seeds.py only
parses flags and calls these.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display on a training host
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from dirroute_jax import workdir as workdir_lib  # noqa: E402
from dirroute_jax.analysis import stats  # noqa: E402
from dirroute_jax.analysis.markdown import fmt, table  # noqa: E402
from dirroute_jax.config import ConfigError, flatten  # noqa: E402
from dirroute_jax.model.variants import PREFIX_ONLY as PREFIX  # noqa: E402

# What a run trains by default; `--models` may name others of model/variants.py (e.g.
# routed,flops_matched for the compute-matched control, in an OUT of its own).
MODELS = ("routed", "baseline", "matched")
POOLINGS = ("sequence_mean", "causal_mean")
FINAL = "final.json"


# (label, model a, model b, poolings it applies to (None: all)); each is "a lowers held-out
# PPL relative to b", the paper's side (+1) being a gain from routing. A comparison is made where
# the runs trained both of its models (the prefix-only twin is the routed model's parameters,
# evaluated with prefix pooling).
COMPARISONS = (
  ("routed vs baseline", "routed", "baseline", None),
  ("routed vs matched", "routed", "matched", None),
  ("routed, prefix-only routing, vs baseline", PREFIX, "baseline", ("sequence_mean",)),
  ("routed, prefix-only routing, vs matched", PREFIX, "matched", ("sequence_mean",)),
  ("leak: routed as trained vs prefix-only routing", "routed", PREFIX, ("sequence_mean",)),
  ("routed vs flops_matched", "routed", "flops_matched", None),
  ("routed, prefix-only routing, vs flops_matched", PREFIX, "flops_matched", ("sequence_mean",)),
)
# The gain whose difference between the poolings is reported (sequence_mean minus causal_mean).
# The same against `matched`: under one seed both poolings train identical baselines (checked).
POOLING_DIFFERENCES = ("routed vs baseline",)

# "No difference" is only said within a stated margin: +/-1% PPL, the size of effect the seeds'
# spread makes resolvable with about 10-15 seeds (REPRODUCTION.md).
EQUIVALENCE_MARGIN = 0.01
PRIMARY_SCOPE = "all"

METHOD = (
  "Per seed, the held-out log-perplexity difference log PPL_b - log PPL_a (positive: a is "
  "better) of two models trained in the same run (same seed, same batches). Mean over seeds "
  "with a two-sided 95% Student-t interval (n - 1 degrees of freedom) on those paired "
  "differences; shown as a PPL reduction 1 - PPL_a / PPL_b, i.e. 1 - exp(-mean), the interval "
  "mapped the same way. The pooling difference is paired by seed (both poolings share each "
  "seed's initial weights and batches): per seed, the sequence_mean gain minus the causal_mean "
  "gain in log-perplexity, with the same t-interval (the baselines being identical under "
  "both poolings, it is the same against the matched baseline). Beside each interval, the "
  "t-test p it inverts and the exact two-sided sign-flip p over the 2^n sign patterns of the "
  "per-seed differences "
  "(no normality assumption; its floor is 2/2^n, 0.0625 at 5 seeds, 6.1e-05 at 15). The "
  "all-domains scope is the one primary comparison of each row's claim; the per-domain scopes "
  "are exploratory, their t-test p Holm-adjusted over every per-domain test of the table (the "
  "family-wise error rate: 'how many did you test?'). Verdict, on the log scale (the ratio "
  "scale maps monotonically, so it gives the same verdict): 'holds' when p < 0.05 (for the "
  "primary scope: the 95% interval excludes zero) on the side of a gain, Holm-adjusted for "
  "exploratory rows; 'does not hold (opposite)' the same on the other side; 'no difference "
  "(within margin)' when the two "
  f"one-sided tests (the 90% interval) put the mean within +/-{100 * EQUIVALENCE_MARGIN:g}% PPL; "
  "'uninformative' otherwise (too few seeds for either)."
)


def run_config(base_cfg, pooling: str, seed: int, models: Iterable[str] = MODELS):
  """The config of one run: `base_cfg` with this pooling and seed, training `models`."""
  cfg = copy.deepcopy(base_cfg)
  cfg.model.pooling = pooling
  cfg.seed = int(seed)
  cfg.models = ",".join(models)
  return cfg


def workdir_of(out_dir: str, pooling: str, seed: int) -> str:
  return os.path.join(out_dir, pooling, f"seed_{seed}")


def _flat_config(cfg) -> dict:
  """{"model.d_model": 64, ...}, as JSON would give it back."""
  return json.loads(json.dumps(flatten(cfg.to_dict())))


# Keys that may change between a run and its rerun without changing what was trained.
_IRRELEVANT = ("data.cache_dir", "data.worker_count", "log_every", "checkpoint_every")


def _check_same_config(final_path: str, cfg) -> None:
  """A finished seed is only reused by a command that would train it the same way."""
  with open(final_path) as f:
    old = json.load(f).get("config", {})
  new = _flat_config(cfg)
  diff = sorted(k for k in set(old) | set(new) if k not in _IRRELEVANT and old.get(k) != new.get(k))
  if diff:
    shown = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff[:3])
    raise ConfigError(
      f"{final_path} was trained with a different config ({shown}"
      f"{', ...' if len(diff) > 3 else ''}). Use another --out for a new "
      "experiment, or the flags of the first run to finish this one."
    )


def run_seeds(
  base_cfg,
  out_dir: str,
  seeds: Iterable[int],
  poolings: Iterable[str] = POOLINGS,
  *,
  models: Iterable[str] = MODELS,
  log: Callable[..., None] = print,
):
  """Trains every (seed, pooling) not finished yet; a rerun skips finished seeds and resumes a
  partly trained one from its checkpoint. Seeds are the outer loop, so an interrupted command
  leaves whole seeds (both poolings) behind. Returns None when every run finished, else the
  interrupted run's RunSummary (Ctrl-C or SIGTERM: its checkpoint is saved)."""
  from dirroute_jax.train.loop import train  # here: aggregation alone needs no training stack

  seeds, poolings, models = [int(s) for s in seeds], list(poolings), tuple(models)
  todo = []
  for s in seeds:
    for p in poolings:
      path = os.path.join(workdir_of(out_dir, p, s), FINAL)
      if os.path.exists(path):
        _check_same_config(path, run_config(base_cfg, p, s, models))
      else:
        todo.append((s, p))
  log(
    f"{len(seeds) * len(poolings) - len(todo)} of {len(seeds) * len(poolings)} runs already "
    f"finished in {out_dir}; {len(todo)} to train."
  )
  t_all = time.time()
  for i, (seed, pooling) in enumerate(todo):
    workdir = workdir_of(out_dir, pooling, seed)
    log(f"=== run {i + 1}/{len(todo)}: pooling {pooling}, seed {seed} -> {workdir}")
    t = time.time()
    summary = train(run_config(base_cfg, pooling, seed, models), workdir, log=log)
    if summary.interrupted:
      return summary
    final = {
      "pooling": pooling,
      "seed": seed,
      "step": summary.last_step,
      "train_sec": round(time.time() - t, 1),
      "eval": summary.eval_metrics,
      "config": _flat_config(run_config(base_cfg, pooling, seed, models)),
    }
    tmp = os.path.join(workdir, FINAL + ".tmp")
    with open(tmp, "w") as f:
      json.dump(final, f, indent=1)
    os.replace(tmp, os.path.join(workdir, FINAL))
    elapsed = time.time() - t_all
    log(
      f"=== run {i + 1}/{len(todo)} done in {final['train_sec']:.0f}s; "
      f"{len(todo) - i - 1} left, about {elapsed / (i + 1) * (len(todo) - i - 1) / 60:.0f} min"
    )
  return None


def collect(
  out_dir: str, poolings: Iterable[str] = POOLINGS, seeds: Iterable[int] | None = None
) -> dict[str, dict[int, dict]]:
  """{pooling: {seed: final.json}} for every finished run under `out_dir` (of `seeds` only,
  if given)."""
  wanted = None if seeds is None else {str(int(s)) for s in seeds}
  out = {}
  for pooling in poolings:
    root = os.path.join(out_dir, pooling)
    runs = {}
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
      path = os.path.join(root, name, FINAL)
      if (
        name.startswith("seed_")
        and os.path.exists(path)
        and (wanted is None or name[len("seed_") :] in wanted)
      ):
        with open(path) as f:
          final = json.load(f)
        runs[int(final["seed"])] = final
    if runs:
      out[pooling] = dict(sorted(runs.items()))
  return out


def metric_key(model: str, scope: str) -> str:
  """The final.json key of `model`'s held-out perplexity in `scope` ("all" or a domain)."""
  return f"eval/{model}/perplexity" if scope == "all" else f"eval/{model}/{scope}/perplexity"


def _domains(finals: dict[str, dict[int, dict]]) -> list[str]:
  """The held-out domains named in any run's evaluation (eval/<model>/<domain>/perplexity)."""
  found = set()
  for runs in finals.values():
    for final in runs.values():
      for k in final["eval"]:
        parts = k.split("/")
        if len(parts) == 4 and parts[0] == "eval" and parts[3] == "perplexity":
          found.add(parts[2])
  return sorted(found)


def trained_models(runs: dict[int, dict]) -> tuple[str, ...]:
  """The models `runs` ({seed: final.json}) evaluated (eval/<model>/perplexity), MODELS first;
  the prefix-only twin is not one (it is the routed model's parameters)."""
  found = {
    k.split("/")[1]
    for final in runs.values()
    for k in final["eval"]
    if k.startswith("eval/") and k.endswith("/perplexity") and k.count("/") == 2
  } - {PREFIX}
  return tuple(m for m in MODELS if m in found) + tuple(sorted(found - set(MODELS)))


def _shown_models(trained: Iterable[str], pooling: str) -> tuple[str, ...]:
  """The trained models plus, for a sequence_mean routed model, its prefix-only twin."""
  trained = tuple(trained)
  return trained + ((PREFIX,) if pooling == "sequence_mean" and "routed" in trained else ())


def interval_entry(per_seed: dict[int, float], missing: Sequence[str] = ()) -> dict:
  """The paired interval, its p values and verdict from per-seed log-ratios (positive: a is
  better); with `missing` metrics, only those are listed."""
  entry = {"per_seed_log_ratio": {str(s): v for s, v in per_seed.items()}}
  if missing:
    entry["missing"] = list(missing)
    return entry
  ci = stats.t_interval(list(per_seed.values()))
  entry.update(
    {
      "n": ci["n"],
      "mean_log_ratio": ci["mean"],
      "sd_log_ratio": ci["sd"],
      "ci_log_ratio": [ci["low"], ci["high"]],
      "reduction": stats.reduction(ci["mean"]),
      "reduction_ci": [stats.reduction(ci["low"]), stats.reduction(ci["high"])],
      "t_test_p": stats.t_test_p(list(per_seed.values())),
      "sign_flip_p": stats.sign_flip_p(list(per_seed.values())),
    }
  )
  _set_verdict(entry)
  return entry


def _set_verdict(entry: dict) -> None:
  """The entry's verdict from its per-seed differences and its p (Holm-adjusted if set)."""
  entry["verdict"] = stats.paired_verdict(
    list(entry["per_seed_log_ratio"].values()),
    stats.log_margin(EQUIVALENCE_MARGIN),
    p=entry.get("p_holm", entry["t_test_p"]),
  )


def _adjust_exploratory(tables: list[dict]) -> None:
  """Holm over every exploratory (per-domain) entry of `tables` ({label: {scope: entry}}),
  in place: sets each one's p_holm and recomputes its verdict from it."""
  entries = [
    e
    for t in tables
    for by_scope in t.values()
    for scope, e in by_scope.items()
    if scope != PRIMARY_SCOPE and "t_test_p" in e
  ]
  for e, p in zip(entries, stats.holm([e["t_test_p"] for e in entries])):
    e["p_holm"] = p
    _set_verdict(e)


def aggregate(finals: dict[str, dict[int, dict]]) -> dict:
  """Per-seed numbers and paired intervals from {pooling: {seed: {"eval": metrics, ...}}}.

  A metric missing from some seed's evaluation (e.g. the prefix-only evaluation from an older
  training run) is listed under "missing" for that comparison instead of an interval.
  """
  domains = _domains(finals)
  scopes = ["all"] + domains
  out = {
    "method": METHOD,
    "level": 0.95,
    "domains": domains,
    "poolings": {},
    "pooling_difference": {},
    "checks": {},
    "train_sec_total": round(
      sum(final.get("train_sec") or 0.0 for runs in finals.values() for final in runs.values()), 1
    ),
  }
  for pooling, runs in finals.items():
    shown = _shown_models(trained_models(runs), pooling)
    per_seed_ppl = {
      str(s): {m: {sc: final["eval"].get(metric_key(m, sc)) for sc in scopes} for m in shown}
      for s, final in runs.items()
    }
    comparisons = {}
    for label, a, b, applies in COMPARISONS:
      if (applies is not None and pooling not in applies) or not {a, b} <= set(shown):
        continue
      comparisons[label] = {}
      for scope in scopes:
        diffs, missing = {}, []
        for seed, final in runs.items():
          ka, kb = metric_key(a, scope), metric_key(b, scope)
          absent = [k for k in (ka, kb) if k not in final["eval"]]
          if absent:
            missing += [f"seed {seed}: {k}" for k in absent]
          else:
            diffs[seed] = math.log(final["eval"][kb]) - math.log(final["eval"][ka])
        comparisons[label][scope] = interval_entry(diffs, missing)
    out["poolings"][pooling] = {
      "seeds": sorted(runs),
      "models": list(trained_models(runs)),
      "steps": sorted({final["step"] for final in runs.values()}),
      "train_sec": {str(s): final.get("train_sec") for s, final in runs.items()},
      "perplexity": per_seed_ppl,
      "comparisons": comparisons,
    }

  seq, causal = out["poolings"].get("sequence_mean"), out["poolings"].get("causal_mean")
  both = set(seq["perplexity"]) & set(causal["perplexity"]) if seq and causal else set()
  labels = [
    label
    for label in POOLING_DIFFERENCES
    if both and label in seq["comparisons"] and label in causal["comparisons"]
  ]
  if not labels:
    out["checks"]["pooling_difference"] = (
      "not computed: no seed finished under both poolings with the same comparisons"
    )
  else:
    for label in labels:
      out["pooling_difference"][label] = {}
      for scope in scopes:
        a = seq["comparisons"][label][scope]["per_seed_log_ratio"]
        b = causal["comparisons"][label][scope]["per_seed_log_ratio"]
        common = sorted(set(a) & set(b), key=int)
        only = sorted(set(a) ^ set(b), key=int)
        entry = interval_entry(
          {int(s): a[s] - b[s] for s in common},
          missing=[] if common else ["no seed under both poolings"],
        )
        if only:  # the interval is over the seeds common to both poolings
          entry["excluded"] = [f"seed {s}: under one pooling only" for s in only]
        out["pooling_difference"][label][scope] = entry
    # Routing is the only difference between the poolings, so each seed's baseline must come
    # out the same under both: a check that the runs are paired as claimed.
    pairs = [
      (seq["perplexity"][s]["baseline"]["all"], causal["perplexity"][s]["baseline"]["all"])
      for s in both
      if "baseline" in seq["perplexity"][s] and "baseline" in causal["perplexity"][s]
    ]
    gaps = [abs(math.log(a) - math.log(b)) for a, b in pairs if a and b]
    out["checks"]["baseline_max_abs_log_ppl_gap_between_poolings"] = max(gaps) if gaps else None
  _adjust_exploratory(
    [p["comparisons"] for p in out["poolings"].values()] + [out["pooling_difference"]]
  )
  out["equivalence_margin"] = EQUIVALENCE_MARGIN
  return out


def _pct(x: float) -> str:
  return f"{100 * x:+.2f}%" if x is not None and math.isfinite(x) else "n/a"


# The columns `row_cells` fills after the mean, in both interval tables.
INTERVAL_COLUMNS = ("95% CI", "t-test p", "sign-flip p", "seeds", "verdict")


def row_cells(entry: dict) -> list:
  if "missing" in entry:
    return [
      "missing",
      "-",
      "-",
      "-",
      len(entry["per_seed_log_ratio"]),
      f"not computed: {len(entry['missing'])} metric(s) missing (seeds.json lists them)",
    ]
  lo, hi = entry["reduction_ci"]
  p = f"{entry['t_test_p']:.2g}" + (f" (Holm {entry['p_holm']:.2g})" if "p_holm" in entry else "")
  return [
    _pct(entry["reduction"]),
    f"[{_pct(lo)}, {_pct(hi)}]",
    p,
    f"{entry['sign_flip_p']:.3g}",
    entry["n"],
    entry["verdict"],
  ]


def _rows(by_scope: dict, prefix: list) -> list[list]:
  """One row per held-out scope; a comparison missing in every scope collapses to one row."""
  if all("missing" in e for e in by_scope.values()):
    first = next(iter(by_scope.values()))  # the "all" scope
    lacking = sorted({m.split(": ", 1)[0] for m in first["missing"]})
    total = len(lacking) + len(first["per_seed_log_ratio"])
    key = first["missing"][0].split(": ", 1)[-1]
    return [
      prefix
      + [
        "every scope",
        "missing",
        "-",
        "-",
        "-",
        len(first["per_seed_log_ratio"]),
        f"not computed: {len(lacking)} of {total} runs lack {key} (and more; "
        "seeds.json lists them)",
      ]
    ]
  return [
    prefix + [scope if scope != PRIMARY_SCOPE else f"{scope} (primary)"] + row_cells(entry)
    for scope, entry in by_scope.items()
  ]


def to_markdown(results: dict) -> str:
  lines = ["## Held-out perplexity over seeds", "", results["method"], ""]
  rows = []
  for pooling, p in results["poolings"].items():
    for label, by_scope in p["comparisons"].items():
      rows += _rows(by_scope, [pooling, label])
  lines += [
    table(
      [
        "pooling",
        "comparison (a vs b)",
        "held-out scope",
        "mean PPL reduction 1 - PPL_a/PPL_b",
        *INTERVAL_COLUMNS,
      ],
      rows,
    ),
    "",
  ]
  if results["pooling_difference"]:
    lines += ["### sequence_mean gain minus causal_mean gain (paired by seed)", ""]
    rows = [
      row
      for label, by_scope in results["pooling_difference"].items()
      for row in _rows(by_scope, [label])
    ]
    lines += [
      table(
        [
          "gain",
          "held-out scope",
          "mean difference (as a PPL reduction)",
          *INTERVAL_COLUMNS,
        ],
        rows,
      ),
      "",
    ]
  lines += ["### Per seed: held-out perplexity (all domains)", ""]
  columns = []  # every model of any pooling, in first-seen order
  for p in results["poolings"].values():
    for by_model in p["perplexity"].values():
      columns += [m for m in by_model if m not in columns]
  rows = []
  for pooling, p in results["poolings"].items():
    for seed, by_model in p["perplexity"].items():
      rows.append(
        [pooling, seed]
        + [
          fmt(by_model[m]["all"]) if m in by_model and by_model[m]["all"] is not None else "-"
          for m in columns
        ]
      )
  names = ["routed, prefix-only routing" if m == PREFIX else m for m in columns]
  lines += [table(["pooling", "seed", *names], rows), ""]
  lines.append(
    f"Training time of these runs, summed: {results['train_sec_total'] / 60:.1f} min "
    "(per run: seeds.json, `train_sec`)."
  )
  lines.append("")
  gap = results["checks"].get("baseline_max_abs_log_ppl_gap_between_poolings")
  if gap is not None:
    lines.append(
      f"Check: each seed's baseline under the two poolings differs by at most {gap:.3g}"
      " in held-out log-perplexity (0 when the runs are paired as claimed)."
    )
  return "\n".join(lines) + "\n"


def read_curves(workdir: str) -> dict[str, tuple[list[int], list[float]]]:
  """{model: (steps, held-out perplexities)} from a run's metrics.jsonl (last row per step)."""
  rows = {}
  with workdir_lib.metrics(workdir).open() as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        rows.setdefault(row["step"], {}).update(row)
  curves = {}
  for model in sorted({k.split("/")[1] for r in rows.values() for k in r if k.startswith("eval/")}):
    pts = [
      (s, r[f"eval/{model}/perplexity"])
      for s, r in sorted(rows.items())
      if f"eval/{model}/perplexity" in r
    ]
    if pts:
      curves[model] = ([p[0] for p in pts], [p[1] for p in pts])
  return curves


def plot_curves(out_dir: str, finals: dict[str, dict[int, dict]], path: str) -> str:
  """Held-out PPL versus step, one panel per pooling, one line per seed and model."""
  colors = {
    "routed": "tab:red",
    "baseline": "tab:blue",
    "matched": "tab:green",
    "flops_matched": "tab:purple",
  }
  fig, axes = plt.subplots(
    1, len(finals), figsize=(5.5 * len(finals), 3.8), squeeze=False, sharey=True
  )
  for ax, (pooling, runs) in zip(axes[0], finals.items()):
    for seed in runs:
      curves = read_curves(workdir_of(out_dir, pooling, seed))
      for model, color in colors.items():
        if model in curves:
          ax.plot(
            *curves[model], color=color, alpha=0.6, lw=1, label=model if seed == min(runs) else None
          )
    ax.set_title(f"{pooling} ({len(runs)} seeds)")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("held-out perplexity")
  axes[0][0].legend()
  fig.savefig(path, dpi=110, bbox_inches="tight")
  plt.close(fig)
  return path


def write_outputs(
  out_dir: str, poolings: Iterable[str] = POOLINGS, seeds: Iterable[int] | None = None
) -> dict[str, str]:
  """Aggregates the finished runs under `out_dir` (of `seeds` only, if given) into seeds.json,
  seeds.md and ppl_vs_step.png."""
  finals = collect(out_dir, poolings, seeds)
  if not finals:
    raise FileNotFoundError(f"no finished run (*/seed_*/{FINAL}) under {out_dir}; train first.")
  results = aggregate(finals)
  paths = {
    "json": os.path.join(out_dir, "seeds.json"),
    "markdown": os.path.join(out_dir, "seeds.md"),
    "plot": os.path.join(out_dir, "ppl_vs_step.png"),
  }
  with open(paths["json"], "w") as f:
    json.dump(results, f, indent=1)
  with open(paths["markdown"], "w") as f:
    f.write(to_markdown(results))
  plot_curves(out_dir, finals, paths["plot"])
  return paths


def write_claims(
  out_dir: str, seed: int, poolings: Iterable[str] = POOLINGS, log=print
) -> dict[str, str]:
  """Every interpretability analysis of `seed`'s run under each pooling (report.json, report.md
  and plots in OUT/<pooling>/seed_<seed>/report) and the claims table built from them
  (OUT/claims.md). One seed: the analyses' own nulls and controls give its intervals."""
  # Analysis sits above training; imported here so that aggregating needs neither.
  from dirroute_jax.analysis import claims
  from dirroute_jax.analysis.load import load_workdir
  from dirroute_jax.analysis.report import run_analyses, write_report

  reports, paths = {}, {}
  for pooling in poolings:
    workdir = workdir_of(out_dir, pooling, seed)
    if not os.path.exists(os.path.join(workdir, FINAL)):
      raise FileNotFoundError(
        f"seed {seed} under {pooling} has not finished ({workdir}); "
        "train it first or pick a finished --claims_seed."
      )
    log(f"Interpretability report of {workdir} (a few minutes on 2 CPU cores)")
    run = load_workdir(workdir)
    reports[pooling] = run_analyses(run)
    paths[f"report_{pooling}"] = write_report(
      reports[pooling], run, os.path.join(workdir, "report")
    )["md"]
  paths["claims"] = os.path.join(out_dir, "claims.md")
  with open(paths["claims"], "w") as f:
    f.write(
      f"Seed {seed}.\n\n"
      + claims.claims_table(reports)
      + "\n\n"
      + claims.leak_vs_gain(reports)
      + "\n"
    )
  return paths
