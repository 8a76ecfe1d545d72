"""Routing ablations: held-out perplexity with the routing weights replaced (METHOD.md).

The paper reports routed PPL ~15, ~7.7 million with every routing weight at 0, 5,284 with every
weight at 0.5, and +42.6 PPL for its worst single-layer knockout. This module measures the same
conditions for every model of a trained set, overall and per domain:

  as_trained      the router's own weights (the reference every delta is taken against)
  all_off         every r = 0 (`routing_off`): the heads' outputs pass unsuppressed
  all_mean        every r fixed at its held-out mean for its (layer, head, direction): the
                  average suppression without its dependence on the input. as_trained vs
                  all_mean is what input-dependent routing buys; all_mean vs all_off is what
                  average suppression buys.
  all_0.5         every r = 0.5 (`routing_fixed(0.5)`)
  all_1           every r = 1: every direction fully removed (brackets the other end)
  layer_{l}_off   r = 0 in layer l only, router as trained elsewhere

Protocol choices the paper leaves open:
  * The ablations are interventions on r (after the router, before the suppression), applied at
    every position; the router still runs. Nothing is re-trained or re-normalised.
  * PPL is exp(token-weighted mean cross-entropy) over the held-out batches training's eval
    used (`cfg.eval_batches`; default 0 = the whole held-out split, so `as_trained` equals the
    logged `eval/{model}/perplexity`). Padding targets (weight 0) and padding rows are excluded.
  * The routed-vs-baseline PPL reduction carries a 95% paired bootstrap interval over held-out
    windows (both models' losses on the same resampled windows). Windows of one document are
    not independent, so the interval is somewhat too narrow.
  * Control for the gain: the same pair at initialisation (`reduction_at_init`). Routing
    changes the function before any training, so only a gain beyond the untrained pair's is
    a learned one.
  * Control: the baseline has no router, so every condition must leave it unchanged; its row is
    reported next to the routed one and `control.baseline_invariant` checks it bit for bit.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from dirroute_jax.analysis import plots, verdicts
from dirroute_jax.analysis import result as result_lib
from dirroute_jax.analysis.forward import complete, loss_sums, mean_routing
from dirroute_jax.analysis.markdown import fmt, pct_ci, sample, table
from dirroute_jax.analysis.stats import paired_bootstrap_reduction
from dirroute_jax.analysis.verdicts import interval_verdict, yes_no
from dirroute_jax.model import interventions as iv_lib
from dirroute_jax.model.transformer import Transformer, init_params
from dirroute_jax.model.variants import PREFIX_ONLY
from dirroute_jax.train import evaluate

# The paper's numbers (433M model, 2.6B tokens): compare directions of effects, not magnitudes.
PAPER = {
  "routed_ppl": 15.0,
  "all_off_ppl": 7.7e6,
  "all_0.5_ppl": 5284.0,
  "worst_layer": 9,
  "worst_layer_delta_ppl": 42.6,
  "routed_ppl_reduction_vs_baseline": "31-56% per domain",
}

# The paper's worst single-layer knockout is layer 9 of 12 (0-based): relative depth
# (9 + 0.5) / 12, the centre of that layer in [0, 1].
PAPER_WORST_LAYER_DEPTH = (9 + 0.5) / 12

# A table [condition][domain or "all"] (conditions in `conditions` order, "all" first).
Table = dict[str, dict[str, float]]


@dataclasses.dataclass(frozen=True)
class ModelAblation:
  """One model under every condition."""

  ppl: Table
  delta_ppl_vs_as_trained: Table
  loss: Table  # token-weighted mean cross-entropy
  per_layer_delta_ppl: list[float]  # L: PPL change with one layer's routing off
  worst_layer: int
  worst_layer_delta_ppl: float


@dataclasses.dataclass(frozen=True)
class Control:
  """Baseline invariance (the null of every routing ablation) and routed vs baseline PPL."""

  # Per model without a router: the largest change of its loss over the conditions, and
  # whether that is exactly 0. Stored as "<model>_max_abs_loss_change", "<model>_invariant".
  max_abs_loss_change: dict[str, float] = dataclasses.field(default_factory=dict)
  invariant: dict[str, bool] = dataclasses.field(default_factory=dict)
  # 1 - PPL_routed / PPL_baseline, as trained, per domain and "all" (positive: routed better).
  routed_ppl_reduction_vs_baseline: dict[str, float] | None = None
  routed_ppl_reduction_ci95: dict[str, tuple[float, float]] | None = None
  ci_method: str | None = None
  # The same reduction of the pair at initialisation: {"routed" or PREFIX: {domain: value}}.
  reduction_at_init: Table | None = None

  _PER_MODEL = ("max_abs_loss_change", "invariant")

  @staticmethod
  def to_stored(d: dict) -> dict:
    out = {}
    for key in Control._PER_MODEL:
      for name, v in d.pop(key).items():
        out[f"{name}_{key}"] = v
    return {**out, **d}

  @staticmethod
  def from_stored(d: dict) -> dict:
    out = {key: {} for key in Control._PER_MODEL}
    for k, v in d.items():
      key = next((key for key in Control._PER_MODEL if k.endswith("_" + key)), None)
      if key is None:
        out[k] = v
      else:
        out[key][k[: -len(key) - 1]] = v
    return out

  @property
  def baseline_invariant(self) -> bool | None:
    return self.invariant.get("baseline")


@dataclasses.dataclass(frozen=True)
class Ablation:
  """The ablation section: every model's held-out PPL under every condition (module doc)."""

  paper: dict[str, Any]
  num_batches: int
  domains: list[str]
  conditions: list[str]
  tokens: dict[str, float]  # real target tokens, "all" and per domain
  models: dict[str, ModelAblation]
  control: Control
  mean_routing_LxHxK: Any = None  # L x H x K nested lists, where a model has a router
  eval_stride: float | None = None
  protocol: dict[str, Any] | None = None


def conditions(model_cfg, mean_r_LxHxK=None) -> dict[str, iv_lib.Interventions]:
  """The ablation conditions (name -> complete Interventions), `as_trained` first;
  `all_mean` when the held-out mean routing weights are given."""
  out = {
    "as_trained": complete(model_cfg),
    "all_off": complete(model_cfg, iv_lib.routing_off(model_cfg)),
  }
  if mean_r_LxHxK is not None:
    out["all_mean"] = complete(model_cfg, iv_lib.routing_fixed(model_cfg, mean_r_LxHxK))
  out.update(
    {
      "all_0.5": complete(model_cfg, iv_lib.routing_fixed(model_cfg, 0.5)),
      "all_1": complete(model_cfg, iv_lib.routing_fixed(model_cfg, 1.0)),
    }
  )
  for l in range(model_cfg.num_layers):
    out[f"layer_{l}_off"] = complete(model_cfg, iv_lib.routing_off(model_cfg, [l]))
  return out


def ablation_ppl(
  models: dict[str, Transformer], params: dict, batches: Iterable[dict], domains: tuple[str, ...]
) -> dict:
  """Perplexity of each model under each condition, overall and per domain.

  `batches` are eval batches (`inputs`, `targets`, `weights`, `domain`), iterated twice (the
  held-out mean routing first). The conditions are built from the routed (else first) model's
  config (routing interventions are ignored by a baseline, and all models of a set share
  L, H, K).
  """
  batches = list(batches)
  names = list(models)
  router = "routed" if "routed" in models else names[0]
  model_cfg = models[router].cfg
  mean_r = mean_routing(models[router], params[router], batches) if model_cfg.routing else None
  conds = conditions(model_cfg, mean_r)
  # sums[model][condition][domain id] = (loss sum, tokens)
  loss_sum = {n: {c: np.zeros(len(domains)) for c in conds} for n in names}
  token_sum = {n: np.zeros(len(domains)) for n in names}
  # As-trained loss per real window, for the paired bootstrap.
  window_loss = {n: [] for n in names}
  window_tokens, window_domain = [], []
  num_batches = 0
  for batch in batches:
    num_batches += 1
    domain_B = np.asarray(batch["domain"])
    real_B = domain_B >= 0
    window_tokens.append(np.asarray(batch["weights"]).sum(1)[real_B])
    window_domain.append(domain_B[real_B])
    args = (batch["inputs"], batch["targets"], batch["weights"])
    for name in names:
      for c, iv in conds.items():
        loss_B, tokens_B = jax.device_get(loss_sums(models[name], params[name], *args, iv))
        loss_B = np.asarray(loss_B, np.float64)
        for d in range(len(domains)):
          sel = domain_B == d
          loss_sum[name][c][d] += float(loss_B[sel].sum())
          if c == "as_trained":
            token_sum[name][d] += float(np.asarray(tokens_B)[sel].sum())
        if c == "as_trained":
          window_loss[name].append(loss_B[real_B])

  def ppl(loss, tokens):
    return math.exp(loss / tokens) if tokens else float("nan")

  present = [d for d in range(len(domains)) if token_sum[names[0]][d] > 0]
  tables = {}
  for name in names:
    tok = token_sum[name]
    loss_tab, ppl_tab = {}, {}
    for c in conds:
      s = loss_sum[name][c]
      loss_tab[c] = {
        "all": float(s.sum() / tok.sum()),
        **{domains[d]: float(s[d] / tok[d]) for d in present},
      }
      ppl_tab[c] = {
        "all": ppl(s.sum(), tok.sum()),
        **{domains[d]: ppl(s[d], tok[d]) for d in present},
      }
    delta_tab = {c: {k: v - ppl_tab["as_trained"][k] for k, v in ppl_tab[c].items()} for c in conds}
    deltas = [delta_tab[f"layer_{l}_off"]["all"] for l in range(model_cfg.num_layers)]
    worst = int(np.argmax(deltas))
    tables[name] = ModelAblation(
      ppl=ppl_tab,
      delta_ppl_vs_as_trained=delta_tab,
      loss=loss_tab,
      per_layer_delta_ppl=deltas,
      worst_layer=worst,
      worst_layer_delta_ppl=deltas[worst],
    )
  control = _controls(tables, models)
  if "routed" in models and "baseline" in models and window_tokens:
    tokens_N, domain_N = np.concatenate(window_tokens), np.concatenate(window_domain)
    loss_r, loss_b = np.concatenate(window_loss["routed"]), np.concatenate(window_loss["baseline"])
    ci = {"all": paired_bootstrap_reduction(loss_r, loss_b, tokens_N)}
    for d in present:
      sel = domain_N == d
      ci[domains[d]] = paired_bootstrap_reduction(loss_r[sel], loss_b[sel], tokens_N[sel])
    control = dataclasses.replace(
      control,
      routed_ppl_reduction_ci95=ci,
      ci_method=f"paired bootstrap over {len(tokens_N)} held-out windows (2000 resamples)",
    )
  return Ablation(
    paper=PAPER,
    num_batches=num_batches,
    domains=[domains[d] for d in present],
    conditions=list(conds),
    tokens={
      "all": float(token_sum[names[0]].sum()),
      **{domains[d]: float(token_sum[names[0]][d]) for d in present},
    },
    models=tables,
    control=control,
    mean_routing_LxHxK=None if mean_r is None else mean_r.tolist(),
  )


def _controls(tables: dict[str, ModelAblation], models: dict[str, Transformer]) -> Control:
  """Baseline invariance (the null for every routing ablation) and routed-vs-baseline PPL."""
  change, invariant = {}, {}
  for name, model in models.items():
    if not model.cfg.routing:
      losses = [row["all"] for row in tables[name].loss.values()]
      change[name] = max(abs(x - losses[0]) for x in losses)
      invariant[name] = change[name] == 0.0
  reduction = None
  if "routed" in tables and "baseline" in tables:
    r, b = tables["routed"].ppl["as_trained"], tables["baseline"].ppl["as_trained"]
    # Positive = the routed model's perplexity is that fraction lower (the paper: 31-56%).
    reduction = {k: 1.0 - r[k] / b[k] for k in r}
  return Control(
    max_abs_loss_change=change, invariant=invariant, routed_ppl_reduction_vs_baseline=reduction
  )


def reduction_at_init(models: dict[str, Transformer], batches, domains, seed: int) -> dict:
  """The routed-vs-baseline PPL reduction of the same pair at initialisation (training's init:
  one key, `seed`, for every model), as trained and with prefix-only routing when that applies.

  Routing changes the function before any training (r ~ 0.5 suppresses every head a little),
  so a trained gain is evidence of learning only beyond this one."""
  key = jax.random.key(seed)
  params = {n: init_params(m, key) for n, m in models.items()}
  m = evaluate.evaluate_params(models, params, batches, domains)
  out = {}
  for name in ("routed", PREFIX_ONLY):
    if f"eval/{name}/loss" not in m:
      continue
    out[name] = {
      "all": 1.0 - math.exp(m[f"eval/{name}/loss"] - m["eval/baseline/loss"]),
      **{
        d: 1.0 - math.exp(m[f"eval/{name}/{d}/loss"] - m[f"eval/baseline/{d}/loss"])
        for d in domains
        if f"eval/{name}/{d}/loss" in m
      },
    }
  return out


def ablation(run, *, num_batches: int | None = None) -> Ablation:
  """Routing ablations of a loaded workdir (`analysis.load.load_workdir`): see module doc."""
  n = (run.cfg.eval_batches if num_batches is None else num_batches) or None
  result = ablation_ppl(run.models, run.params, run.data.eval_batches(n), run.data.domains)
  control = result.control
  if "routed" in run.models and "baseline" in run.models:
    control = dataclasses.replace(
      control,
      reduction_at_init=reduction_at_init(
        run.models, run.data.eval_batches(n), run.data.domains, int(run.cfg.seed)
      ),
    )
  return dataclasses.replace(
    result,
    eval_stride=run.data.eval_stride(n),
    control=control,
    protocol={
      "intervention": "routing weights r replaced at every position after the router",
      "all_mean": "r fixed at its held-out token-weighted mean per (layer, head, direction)",
      "ppl": "exp(token-weighted mean CE) over held-out eval batches, padding excluded",
      "control": "baseline under the same interventions (must be unchanged)",
      "checkpoint_step": int(run.step),
    },
  )


def per_layer_delta_ppl(r: Ablation, model: str = "routed") -> list[float] | None:
  """Held-out PPL change when one layer's routing is switched off, per layer (None for a model
  the section did not measure)."""
  m = result_lib.model(r, model)
  return None if m is None else m.per_layer_delta_ppl


def worst_layer(r: Ablation, model: str = "routed") -> int:
  """The layer whose single knockout raises PPL most."""
  return r.models[model].worst_layer


def paper_layer(num_layers: int) -> int:
  """The layer of an L-layer model at the paper's worst layer's relative depth."""
  return min(num_layers - 1, int(PAPER_WORST_LAYER_DEPTH * num_layers))


# Locating "the layer that dominates" needs at least this many layers: with two, the worst
# layer is one of two and lands on the paper's relative depth half the time by chance.
MIN_LAYERS_FOR_LOCATION = 4

# The control "routing off more than doubles PPL" needs: removing any trained component of a
# small model raises its PPL, so the doubling says something about routing only beside the same
# knockout of another trained component of comparable size. The result does not measure it.
MISSING_COMPONENT_CONTROL = (
  "no component control (the same-size knockout of another trained component, e.g. an MLP "
  "or attention block, is not measured: removing any trained part raises PPL)"
)


def claim_rows(r: Ablation, report: dict) -> verdicts.Rows:
  """The claims this section tests (analysis/claims.py):

  ppl_gain        the 95% interval of the PPL reduction vs the baseline (the control) lies
                  above zero and above the same pair's reduction at initialisation (routing
                  changes the function before any training; `interval_verdict`; one run:
                  paired bootstrap over held-out windows); inside +/-1% "no difference",
                  wider "uninformative".
  ppl_conditions  routing off more than doubles PPL and all-0.5 raises it: never "holds"
                  here, the component control is missing (MISSING_COMPONENT_CONTROL): met,
                  "uninformative" with that gate; not met, "does not hold".
  mean_routing    r fixed at its held-out mean (the control: the same suppression, not
                  input-dependent) raises PPL by > 1%.
  layer_ko        one layer dominates (> 3x every other, > 1% of PPL) and it is the layer at
                  the paper's relative depth (layer 9 of 12); the control is chance, 1 of L.
                  Gate: fewer than MIN_LAYERS_FOR_LOCATION layers is "uninformative".
  """
  del report  # every number is this section's
  out = {}
  red = r.control.routed_ppl_reduction_vs_baseline
  ci = r.control.routed_ppl_reduction_ci95 or {}
  init_all = (r.control.reduction_at_init or {}).get("routed", {}).get("all", 0.0)
  doms = [k for k in red if k != "all"]
  out["ppl_gain"] = (
    verdicts.pct_ci(red["all"], ci.get("all"))
    + " ("
    + ", ".join(f"{d} {verdicts.pct_ci(red[d], ci.get(d))}" for d in doms)
    + f"); untrained pair "
    f"{100 * init_all:+.1f}%",
    interval_verdict(*ci["all"], init_all)
    if "all" in ci
    else verdicts.uninformative("no interval (older report)"),
  )
  ppl = r.models["routed"].ppl
  doubles = (
    ppl["all_off"]["all"] > 2 * ppl["as_trained"]["all"]
    and ppl["all_0.5"]["all"] > ppl["as_trained"]["all"]
  )
  out["ppl_conditions"] = (
    f"{fmt(ppl['as_trained']['all'])} / {fmt(ppl['all_off']['all'])} / "
    f"{fmt(ppl['all_0.5']['all'])}",
    verdicts.uninformative(MISSING_COMPONENT_CONTROL) if doubles else verdicts.DOES_NOT_HOLD,
  )
  if "all_mean" in ppl:
    mean, on, off = ppl["all_mean"]["all"], ppl["as_trained"]["all"], ppl["all_off"]["all"]
    out["mean_routing"] = (
      f"as trained {fmt(on)} / r at held-out mean {fmt(mean)} / off {fmt(off)}",
      yes_no(mean > 1.01 * on),
    )
  deltas = per_layer_delta_ppl(r)
  worst = worst_layer(r)
  L = len(deltas)
  others = [d for l, d in enumerate(deltas) if l != worst]
  dominates = (
    bool(others)
    and deltas[worst] > 3 * max(max(others), 1e-9)
    and (deltas[worst] > 0.01 * ppl["as_trained"]["all"])
  )
  expected = paper_layer(L)
  out["layer_ko"] = (
    f"layer {worst} of {L} (relative depth {(worst + 0.5) / L:.2f}; the "
    f"paper's 9 of 12 is {PAPER_WORST_LAYER_DEPTH:.2f}, here layer {expected})"
    f": {deltas[worst]:+.3g} PPL; others " + ", ".join(f"{d:+.3g}" for d in others),
    verdicts.uninformative(
      f"{L} layers: the worst is one of {L} (chance {1 / max(L, 1):.0%}), locating it needs "
      f">= {MIN_LAYERS_FOR_LOCATION}"
    )
    if L < MIN_LAYERS_FOR_LOCATION
    else yes_no(dominates and worst == expected),
  )
  return out


def markdown(r: Ablation) -> str:
  routed, paper = r.models["routed"], r.paper
  base = r.models["baseline"]
  cols = ["all"] + list(r.domains)
  rows = []
  for cond in r.conditions:
    rows.append([cond] + [routed.ppl[cond][c] for c in cols] + [base.ppl[cond]["all"]])
  paper_line = (
    f"Paper: routed PPL ~{fmt(paper['routed_ppl'])}, all weights 0 "
    f"~{fmt(paper['all_off_ppl'])}, all 0.5 {fmt(paper['all_0.5_ppl'])}; worst "
    f"single layer {paper['worst_layer']} (+{paper['worst_layer_delta_ppl']} PPL); "
    f"routed vs baseline {paper['routed_ppl_reduction_vs_baseline']} lower."
  )
  red = r.control.routed_ppl_reduction_vs_baseline
  ci = r.control.routed_ppl_reduction_ci95 or {}
  ppl = routed.ppl
  split = ""
  if "all_mean" in ppl:
    split = (
      f" Input-dependent routing (as trained vs r fixed at its held-out mean): "
      f"{fmt(ppl['all_mean']['all'])} -> {fmt(ppl['as_trained']['all'])} PPL; average "
      f"suppression (mean r vs routing off): {fmt(ppl['all_off']['all'])} -> "
      f"{fmt(ppl['all_mean']['all'])}."
    )
  return "\n".join(
    [
      table(["condition"] + [f"routed PPL {c}" for c in cols] + ["baseline PPL (control)"], rows),
      "",
      f"Over {sample(r.num_batches, r.eval_stride)}. "
      f"Worst single-layer knockout: layer {worst_layer(r)} "
      f"({routed.worst_layer_delta_ppl:+.3g} PPL). Baseline unchanged under every "
      f"intervention: {r.control.baseline_invariant}. PPL reduction routed vs "
      f"baseline (95% interval, {r.control.ci_method or 'none'}): "
      + ", ".join(f"{k} {pct_ci(v, ci.get(k))}" for k, v in red.items())
      + "."
      + split,
      "",
      paper_line,
    ]
  )


def figures(r: Ablation) -> dict:
  """Single-layer knockout: Δ PPL per layer, routed beside the baseline (its bars are 0)."""
  per_layer = {name: per_layer_delta_ppl(r, name) for name in r.models}
  per_layer = {name: d for name, d in per_layer.items() if d is not None}
  if not per_layer:
    return {}
  fig, ax = plots.plt.subplots(figsize=(6, 3.2))
  width = 0.8 / len(per_layer)
  for i, (name, deltas) in enumerate(per_layer.items()):
    x = np.arange(len(deltas)) + i * width
    ax.bar(x, deltas, width, label=f"{name}" + (" (control)" if name == "baseline" else ""))
  ax.axhline(0, color="k", lw=0.6)
  num_layers = len(next(iter(per_layer.values())))
  ax.set_xticks(np.arange(num_layers) + 0.4 - width / 2, [str(l) for l in range(num_layers)])
  ax.set_xlabel("layer whose routing is switched off (the baseline has none: its bars are 0)")
  ax.set_ylabel("Δ held-out PPL")
  ax.set_title("Single-layer routing knockout: Δ perplexity per layer")
  ax.legend()
  return {"ablation_layers": fig}
