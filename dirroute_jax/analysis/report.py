"""The interpretability report: run the analyses on a workdir, write report.json, report.md
(the paper's value beside ours and beside a null or control) and PNG plots.

    results = run_analyses(run, ["causality", "ablation", ...])
    write_report(results, run, out_dir)
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Callable

import numpy as np

from dirroute_jax import workdir as workdir_lib
from dirroute_jax.analysis import (ablation, causality, directions, factual, induction,
                                   linearise, plots, regimes, spectral, steering)
from dirroute_jax.analysis.load import Workdir
from dirroute_jax.train.evaluate import PREFIX

ANALYSES: dict[str, Callable[[Workdir], dict]] = {
    "causality": causality.causality_report,
    "ablation": ablation.ablation,
    "factual": factual.factual,
    "induction": induction.induction,
    "regimes": regimes.regimes,
    "directions": directions.directions,
    "steering": steering.steering,
    "spectral": spectral.spectral,
    "linearise": linearise.linearise,
}


def data_summary(run: Workdir) -> dict:
  """The corpus and tokenizer the analyses ran on (content fingerprints, token counts), and the
  ones the workdir recorded at training time."""
  path = workdir_lib.data_fingerprint(run.path)
  trained_on = json.loads(path.read_text()) if path.exists() else None
  now = run.data.record()
  return {"evaluated_on": now, "trained_on": trained_on,
          "same_as_training": None if trained_on is None else (
              trained_on.get("corpus") == now["corpus"]
              and trained_on.get("tokenizer") == now["tokenizer"]),
          "eval_batches": run.data.num_eval_batches}


def run_analyses(run: Workdir, names=None, *, log=print, options: dict | None = None) -> dict:
  """Runs the named analyses (default all); `options[name]` are keyword arguments for one."""
  names = list(ANALYSES) if names is None else list(names)
  unknown = [n for n in names if n not in ANALYSES]
  if unknown:
    raise ValueError(f"unknown analyses {unknown}; choose from {list(ANALYSES)}.")
  options = options or {}
  results = {"workdir": os.path.abspath(run.path), "step": run.step,
             "config": json.loads(run.cfg.to_json_best_effort()), "data": data_summary(run),
             "timings_sec": {}}
  for name in names:
    t0 = time.time()
    results[name] = ANALYSES[name](run, **options.get(name, {}))
    results["timings_sec"][name] = round(time.time() - t0, 2)
    log(f"  {name}: {results['timings_sec'][name]:.1f} s")
  return results


def write_report(results: dict, run: Workdir, out_dir: str) -> dict[str, str]:
  """Writes report.json, report.md and the plots; returns their paths."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {"json": os.path.join(out_dir, "report.json"),
           "md": os.path.join(out_dir, "report.md")}
  with open(paths["json"], "w") as f:
    json.dump(_jsonable(results), f, indent=1)
  figures = plots.make_plots(results, out_dir)
  with open(paths["md"], "w") as f:
    f.write(render_markdown(results, run, figures))
  paths.update(figures)
  return paths


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, (np.floating, float)):
    v = float(x)
    return v if math.isfinite(v) else str(v)
  if isinstance(x, np.integer):
    return int(x)
  return x


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


def render_markdown(results: dict, run: Workdir, figures: dict[str, str]) -> str:
  m = run.cfg.model
  out = [f"# Interpretability report: `{results['workdir']}` (step {results['step']})", "",
         f"Model: {m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads x "
         f"{m.head_dim}, K={m.num_directions}, pooling `{m.pooling}`, vocab {m.vocab_size}; "
         f"trained {results['step']} steps of {run.cfg.batch_size} x {run.cfg.seq_len} tokens "
         f"on `{run.cfg.data.source}` data. The paper's model is 433M parameters trained on "
         "2.6B tokens: compare directions of effects, not magnitudes.", ""]
  if "data" in results:
    out += [_data(results["data"]), ""]
  for name in ANALYSES:
    if name in results:
      out += [f"## {name}", "", _SECTIONS[name](results[name]), ""]
      for key, path in figures.items():
        if key.startswith(name):
          out += [f"![{key}]({os.path.basename(path)})", ""]
  out += ["## Timings", "", table(["analysis", "seconds"],
                                  [[k, v] for k, v in results["timings_sec"].items()]), ""]
  return "\n".join(out)


def _data(d: dict) -> str:
  now = d["evaluated_on"]
  tokens = now.get("tokens", {})
  domains = sorted({dom for per in tokens.values() for dom in per})
  rows = [[split] + [per.get(dom, 0) for dom in domains] + [sum(per.values())]
          for split, per in tokens.items()]
  same = {None: "no record in the workdir", True: "yes", False: "NO: numbers are on a "
          "different corpus or tokenizer than training's"}[d["same_as_training"]]
  return "\n".join([
      f"Corpus fingerprint `{now['corpus']}`, tokenizer `{now['tokenizer']}` (same as at "
      f"training: {same}); held-out split: {now.get('eval_windows')} windows in "
      f"{d['eval_batches']} batches. Tokens:", "",
      table(["split"] + domains + ["all"], rows)])


def _causality(r: dict) -> str:
  rows = [[name, d["verdict"], d["pooling"], d["max_logit_change"], d["tolerance"]]
          for name, d in r["models"].items()]
  out = ["**" + r["note"] + "**", "", table(
      ["model", "audit", "pooling", "max |Δlogit| at t' <= t", "tolerance"], rows)]
  leak = r.get("leak", {})
  if leak.get("applies"):
    ppl = leak["ppl"]
    cols = list(ppl["routed"])
    names = {"routed": "routed, as trained (sees the whole window)",
             PREFIX: "routed, prefix-only routing (as when generating)",
             "baseline": "baseline"}
    rows = [[names[n]] + [ppl[n][c] for c in cols] for n in names if n in ppl]
    out += ["", f"Measured leak over {_sample(leak['num_batches'], leak.get('eval_stride'))}: "
            "same parameters, the router given the prefix mean instead of the whole window's.",
            "",
            table(["model"] + [f"PPL {c}" for c in cols], rows)]
    if "reduction_vs_baseline" in leak:
      red = leak["reduction_vs_baseline"]
      ci = leak.get("reduction_ci95", {})
      out += ["", "PPL reduction vs baseline: as trained " + _pct_ci(
          red["routed"]["all"], ci.get("routed")) + "; prefix-only " + _pct_ci(
          red[PREFIX]["all"], ci.get(PREFIX)) + "."]
  return "\n".join(out)


def _sample(num_batches: int, stride: float | None) -> str:
  """Which held-out batches a number is over: all, or a fixed sample and its interval."""
  if stride is None or stride <= 1.0:
    return f"the whole held-out split ({num_batches} batches)"
  return f"a fixed sample of {num_batches} held-out batches, one every {stride:.3g}"


def _pct_ci(value: float, ci=None) -> str:
  text = f"{100 * value:+.2f}%"
  if ci:
    text += f" [{100 * ci[0]:+.2f}%, {100 * ci[1]:+.2f}%]"
  return text


def _generic(r: dict) -> str:
  """Fallback: flat scalars of a section as a table (every number is in report.json)."""
  rows = [[k, v] for k, v in _flat_scalars(r)]
  return table(["key", "value"], rows[:80]) + ("\n\n(more in report.json)" if len(rows) > 80
                                               else "")


def _flat_scalars(d, prefix=""):
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      yield from _flat_scalars(v, key + ".")
    elif isinstance(v, (int, float, str, bool, np.number)) and not isinstance(v, str) or (
        isinstance(v, str) and len(v) < 120):
      yield key, v


def _induction(r: dict) -> str:
  routed, base, null, paper = r["models"]["routed"], r["models"]["baseline"], r["null"], r["paper"]
  rows = [
      ["induction accuracy (repeated half)", paper["routed_accuracy"], routed["accuracy"],
       base["accuracy"], f"chance {fmt(null['chance_accuracy'])}; first block "
       f"{fmt(routed['first_block_accuracy'])}"],
      ["... routing off", paper["routed_accuracy_routing_off"],
       routed["accuracy_routing_off"], "n/a", "the baseline row above"],
      ["... strongest induction head knocked out",
       paper["routed_accuracy_strongest_head_knocked_out"],
       routed["accuracy_strongest_head_knocked_out"],
       base["accuracy_strongest_head_knocked_out"],
       f"median other single-head knockout {fmt(routed['knockout_control_median_other_heads'])}"
       f" / {fmt(base['knockout_control_median_other_heads'])}"],
      ["strongest head (layer, head): score", "",
       f"{tuple(routed['strongest_head'])}: {fmt(routed['strongest_score'])}",
       f"{tuple(base['strongest_head'])}: {fmt(base['strongest_score'])}",
       f"uniform attention {fmt(null['uniform_attention_induction_score'])}"],
  ]
  p = r["protocol"]
  return (table(["claim", "paper", "routed", "baseline", "null / control"], rows)
          + f"\n\nProtocol: {p['construction']}; doc_len {p['doc_len']}, repeats "
            f"{p['repeats']}, {p['num_seqs']} sequences; {p['knockout']}.")


def _regimes(r: dict) -> str:
  routed = r["models"]["routed"]
  if isinstance(routed, str):
    return routed
  paper = r["paper"]
  var_L = routed["domain_variance_per_layer"]
  rows = [[f"layer {l}", var_L[l], routed["domain_variance_null_p95"][l],
           routed["specialists"]["per_layer"][l]] for l in range(len(var_L))]
  c = routed["classification"]
  out = [table(["layer", "routing variance across domains", "null p95 (shuffled labels)",
                "specialist heads"], rows), "",
         f"Paper: variance {paper['domain_variance_layer0']} (layer 0) vs "
         f"{paper['domain_variance_layer9']} (layer 9); specialists "
         f"{paper['specialists_layer0']} vs {paper['specialists_layer9']}. Specialist "
         f"criterion: {routed['specialists']['criterion']}", "",
         table(["nearest-centroid domain classification", "paper", "ours", "null mean",
                "null p95", "majority class"],
               [["accuracy", paper["classification"], f"{c['correct']}/{c['total']} = "
                 f"{fmt(c['accuracy'])}", c["null_mean"], c["null_p95"], c["majority_rate"]],
                *[[f"control: {k.replace('_', ' ')}", "", v, "", "", ""]
                  for k, v in c.get("controls", {}).items()],
                ["balanced accuracy", "", c["balanced_accuracy"], c["balanced_null_mean"],
                 c["balanced_null_p95"], c["chance_uniform"]]]),
         "", f"Caveat: {r['protocol']['caveat']}."]
  return "\n".join(out)


def _directions(r: dict) -> str:
  routed = r["models"]["routed"]
  if isinstance(routed, str):
    return routed
  cos = routed["cosine"]
  rows = [[f"layer {l}", share, routed["function_share_random_per_layer"][l]]
          for l, share in enumerate(routed["function_share_per_layer"])]
  last = routed["readout"][-1]
  examples = []
  for h, per_head in enumerate(last[:4]):
    for k, d in enumerate(per_head[:2]):
      examples.append([f"L{len(routed['readout']) - 1} H{h} d{k}",
                       " ".join(repr(t) for t in d["top"][:6]),
                       " ".join(repr(t) for t in d["bottom"][:6])])
  return "\n".join([
      table(["readout of directions", "function-token share of top/bottom tokens",
             "random directions (null)"], rows),
      f"\nVocabulary base rate of function tokens: {fmt(routed['function_share_vocab'])}. "
      f"Paper: {r['paper']['readout']}.", "",
      table(["direction", "top tokens (readout +)", "bottom tokens (readout -)"], examples), "",
      table(["cross-layer cosine", "ours", "random-direction null", "verdict"],
            [["off-diagonal mean |cos|", cos["off_diagonal_abs_mean"],
              cos["null"]["analytic_abs_cos_mean"], cos["verdict_abs"]],
             ["off-diagonal mean cos", cos["off_diagonal_signed_mean"], 0.0,
              cos["verdict_signed"]]]),
      "", cos["note"]])


def _ablation(r: dict) -> str:
  routed, base, paper = r["models"]["routed"], r["models"]["baseline"], r["paper"]
  cols = ["all"] + list(r["domains"])
  rows = []
  for cond in r["conditions"]:
    rows.append([cond] + [routed["ppl"][cond][c] for c in cols] + [base["ppl"][cond]["all"]])
  paper_line = (f"Paper: routed PPL ~{fmt(paper['routed_ppl'])}, all weights 0 "
                f"~{fmt(paper['all_off_ppl'])}, all 0.5 {fmt(paper['all_0.5_ppl'])}; worst "
                f"single layer {paper['worst_layer']} (+{paper['worst_layer_delta_ppl']} PPL); "
                f"routed vs baseline {paper['routed_ppl_reduction_vs_baseline']} lower.")
  red = r["control"]["routed_ppl_reduction_vs_baseline"]
  ci = r["control"].get("routed_ppl_reduction_ci95", {})
  ppl = routed["ppl"]
  split = ""
  if "all_mean" in ppl:
    split = (f" Input-dependent routing (as trained vs r fixed at its held-out mean): "
             f"{fmt(ppl['all_mean']['all'])} -> {fmt(ppl['as_trained']['all'])} PPL; average "
             f"suppression (mean r vs routing off): {fmt(ppl['all_off']['all'])} -> "
             f"{fmt(ppl['all_mean']['all'])}.")
  return "\n".join([
      table(["condition"] + [f"routed PPL {c}" for c in cols] + ["baseline PPL (control)"],
            rows), "",
      f"Over {_sample(r['num_batches'], r.get('eval_stride'))}. "
      f"Worst single-layer knockout: layer {routed['worst_layer']} "
      f"({routed['worst_layer_delta_ppl']:+.3g} PPL). Baseline unchanged under every "
      f"intervention: {r['control']['baseline_invariant']}. PPL reduction routed vs "
      f"baseline (95% interval, {r['control'].get('ci_method', 'none')}): "
      + ", ".join(f"{k} {_pct_ci(v, ci.get(k))}" for k, v in red.items()) + "." + split,
      "", paper_line])


def _factual(r: dict) -> str:
  paper = r["paper"]
  rows = []
  for name, m in r["models"].items():
    s = m["summary"]
    rows.append([name, s["as_trained"]["mean_p_target"], s["routing_off"]["mean_p_target"],
                 f"{s['as_trained']['num_at_chance']} / {s['routing_off']['num_at_chance']}",
                 s["as_trained"]["median_rank"], s["routing_off"]["median_rank"],
                 s["mover_ratio_zero_geomean"], s["null_ratio_zero_geomean"],
                 s.get("mover_percentile_zero_mean"), s.get("mover_p_value_zero"),
                 s["mover_ratio_mean_geomean"], s["null_ratio_mean_geomean"]])
  parts = ["embedding", "heads_raw", "routing_delta", "mlps"]
  dla_rows = [["paper (' Paris')"] + [paper["dla_paris"][k] for k in parts] + ["", ""]]
  for name, m in r["models"].items():
    d, rel = m["summary"]["mean_dla"], m["summary"]["mean_dla_relative_to_mean_logit"]
    dla_rows.append([f"{name}: mean over prompts"] + [d[k] for k in parts]
                    + [d["logit"], d["max_abs_residual"]])
    dla_rows.append([f"{name}: minus mean-logit null"] + [rel[k] for k in parts]
                    + [rel["sum"], ""])
  chance = lambda c: " (AT CHANCE)" if c["at_chance"] else ""
  per_prompt = [[p["prompt"], p["target"], " | ".join(repr(t) for t in p["target_tokens"]),
                 p["subject_token"], f"{fmt(p['as_trained']['p_target'])}"
                 f"{chance(p['as_trained'])}",
                 f"{fmt(p['routing_off']['p_target'])}{chance(p['routing_off'])}",
                 math.exp(p["chance_logprob"]), p["as_trained"]["rank"],
                 f"L{p['mover_head']['layer']}H{p['mover_head']['head']}",
                 p["mover_head"]["ratio_zero"]]
                for p in r["models"]["routed"]["prompts"]]
  return "\n".join([
      table(["model", "mean P(target word)", "... routing off", "# at chance (trained / off)",
             "median first-token rank", "... routing off", "mover KO P ratio (zero)",
             "null (other heads)", "mover percentile among heads", "p-value",
             "mover KO ratio (mean)", "null"], rows),
      f"\nP(target word) is the product of the probabilities of all the target's tokens "
      f"(teacher-forced); AT CHANCE marks P < 10x the uniform guess V^-n. Paper: P(target) with "
      f"routing off {paper['p_target_routing_off']}; mover-head knockout raises P "
      f"(x{paper['mover_knockout_p_ratio']}).", "",
      "Direct logit attribution of the first target token's logit (final RMSNorm scale frozen "
      "from the forward; parts sum to the logit, residual shown):", "",
      table(["", "embedding", "heads (raw)", "routing delta", "MLPs", "logit / sum",
             "max |residual|"], dla_rows), "",
      table(["prompt", "target", "scored tokens", "subject token", "P routed",
             "P routing off", "chance", "first-token rank", "mover head", "KO ratio"],
            per_prompt)])


def _steering(r: dict) -> str:
  if "skipped" in r:
    return r["skipped"]
  s = r["summary"]
  rows = [["directions whose forcing (r=1 vs r=0) lowers their promoted tokens' mass",
           s["frac_promoted_delta_negative"], s["null_frac_promoted_delta_negative"]],
          ["... raises their suppressed tokens' mass", s["frac_suppressed_delta_positive"],
           s["null_frac_suppressed_delta_positive"]],
          ["mean Δ mass of promoted tokens", s["mean_delta_promoted"],
           s["null_mean_delta_promoted"]],
          ["mean Δ mass of suppressed tokens", s["mean_delta_suppressed"],
           s["null_mean_delta_suppressed"]]]
  rows += [[f"function-token share of promoted tokens, layer {l}", v,
            s["function_token_share_of_vocab"]]
           for l, v in s["function_token_share_of_promoted_by_layer"].items()]
  top = [[f"L{d['layer']} H{d['head']} d{d['direction']}",
          " ".join(repr(t) for t in d["promoted"][:6]),
          d["mass_promoted"]["delta_r1_minus_r0"], d["mass_promoted"]["z"]]
         for d in r["directions"][:8]]
  return "\n".join([
      f"Expected sign: {s['expected_sign']}. {r['num_measured']} of "
      f"{r['num_directions_total']} directions measured (largest readout norm).", "",
      table(["measure", "ours", "null (an unrelated direction forced)"], rows), "",
      table(["direction", "promoted tokens (readout)", "Δ mass r=1 vs r=0", "z vs null"],
            top), "", f"Paper: {r['paper']['readout']}."])


def _spectral(r: dict) -> str:
  """Per-layer means over heads, each model beside the random-weight null, per RoPE view."""
  null, paper, p = r["null"], r["paper"], r["protocol"]
  models = {n: m for n, m in r["models"].items() if isinstance(m, dict)}
  stats = {"skew_share": "skew share", "skew_erank": "skew erank", "skew_rank90": "skew rank90"}
  header = ["layer"] + [f"{n} {label}" for label in stats.values() for n in [*models, "null"]]
  out = []
  for view, title in (("offset0", "RoPE offset 0: the content kernel W_Q W_K^T (default)"),
                      ("offset_mean", f"RoPE averaged over offsets 0..{p['offsets_T'] - 1}")):
    rows = []
    for l in range(len(next(iter(models.values()))[view]["per_layer"]["skew_erank"])
                   if models else 0):
      row = [f"layer {l}"]
      for key in stats:
        n = null[view][key]
        row += [m[view]["per_layer"][key][l] for m in models.values()]
        row += [f"{fmt(n['mean'])} [{fmt(n['p05'])}, {fmt(n['p95'])}]"]
      rows.append(row)
    slopes = ", ".join(f"{n} {fmt(m[view]['cascade']['slope_per_layer'])}"
                       for n, m in models.items())
    out += [f"**{title}** (null: mean [p05, p95])", "", table(header, rows), "",
            f"Skew erank slope per layer: {slopes}.", ""]
  out += [f"{n}: {m}" for n, m in r["models"].items() if isinstance(m, str)]
  out += [f"Null: {p['null']}; analytic skew share {fmt(null['analytic_skew_share'])}, "
          f"maximum rank min(D, 2 Dh) = {null['max_rank']}, {null['heads_drawn']} heads. "
          f"Paper: skew erank {fmt(paper['skew_erank_layer1'])} at layer 1, {paper['trend']} "
          f"({paper['scale']}; {paper['definition']}).", "",
          f"Definitions: {p['split']}; erank = {p['erank']}; rank90 = {p['rank90']}; "
          f"{p['zero']}. RoPE offset_mean: {p['rope_offset_mean']}."]
  return "\n".join(out)


def _linearise(r: dict) -> str:
  models = r["models"]
  L = len(next(iter(models.values()))["ppl_by_k"]) - 1
  rows = []
  for k in range(L + 1):
    row = [k]
    for m in models.values():
      row += [m["ppl_by_k"][k], f"{100 * m['relative_increase_by_k'][k]:+.1f}%"]
    rows.append(row)
  header = ["first k layers linear"]
  for name, m in models.items():
    header += [f"{name} ({m['attention']}) PPL", "vs k=0"]
  return (table(header, rows) + f"\n\nPaper: S-D, first 7 of a 125M model linearised: "
          f"{r['paper']['sd_first7_of_125M']}; standard attention {r['paper']['standard']}.")


_SECTIONS: dict[str, Callable[[dict], str]] = {name: _generic for name in ANALYSES}
_SECTIONS.update(causality=_causality, ablation=_ablation, factual=_factual,
                 induction=_induction, regimes=_regimes, directions=_directions,
                 steering=_steering, spectral=_spectral, linearise=_linearise)
