"""Causality audit: do a model's logits at position t depend on tokens after t? And how much
does the leak of a non-causal router buy?

The paper's sequence-mean router pools the whole sequence, so every position's routing weights
see the future; a causal LM's logits at positions <= t must not move when tokens > t change.
The audit changes every token after a cut point and reports the largest change of any logit at
or before the cut, over several cut points and random sequences.

The leak is measured, not bounded: routing weights are continuous, so the information they can
carry about the future has no useful bound in bits. `measure_leak` scores the sequence_mean
model as trained and with prefix-only routing (the same parameters, prefix mean pooling: what
the model sees when it generates), beside the baseline.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from dirroute_jax.analysis import verdicts
from dirroute_jax.analysis.forward import ppl_by_position
from dirroute_jax.analysis.markdown import fmt, pct_ci, sample, table
from dirroute_jax.analysis.stats import paired_bootstrap_reduction
from dirroute_jax.model.transformer import Transformer, forward
from dirroute_jax.model.variants import PREFIX_ONLY
from dirroute_jax.train import evaluate


@dataclasses.dataclass(frozen=True)
class AuditResult:
  max_change: float  # largest |logit change| at positions <= cut, over all cuts
  tolerance: float
  worst_cut: int

  @property
  def causal(self) -> bool:
    return self.max_change <= self.tolerance

  @property
  def verdict(self) -> str:
    return "CAUSAL" if self.causal else "LEAK"


def audit_causality(
  model: Transformer,
  params,
  *,
  vocab_size: int,
  seq_len: int = 64,
  batch: int = 2,
  num_cuts: int = 4,
  seed: int = 0,
  rtol: float = 1e-5,
) -> AuditResult:
  """Perturbs all tokens after each cut point and measures earlier logits' change.

  Tolerance is `rtol` times the largest |logit|: XLA is free to reassociate float sums, so a
  causal model is held to float noise, not to bitwise equality. A leak moves logits by orders
  of magnitude more.
  """
  rng = np.random.default_rng(seed)
  tokens_BxT = rng.integers(0, vocab_size, (batch, seq_len), dtype=np.int32)
  apply = jax.jit(lambda p, t: forward(model, p, t)[0])
  logits_BxTxV = np.asarray(apply(params, tokens_BxT))
  tolerance = rtol * max(1.0, float(np.abs(logits_BxTxV[..., :vocab_size]).max()))
  cuts = np.linspace(0, seq_len - 2, num_cuts).astype(int)
  worst, worst_cut = 0.0, int(cuts[0])
  for cut in cuts:
    perturbed_BxT = tokens_BxT.copy()
    # A shift by a nonzero offset mod V guarantees every later token really changes.
    offset = rng.integers(1, vocab_size, (batch, seq_len - cut - 1))
    perturbed_BxT[:, cut + 1 :] = (tokens_BxT[:, cut + 1 :] + offset) % vocab_size
    new_BxTxV = np.asarray(apply(params, perturbed_BxT))
    change = float(
      np.abs(new_BxTxV[:, : cut + 1, :vocab_size] - logits_BxTxV[:, : cut + 1, :vocab_size]).max()
    )
    if change > worst:
      worst, worst_cut = change, int(cut)
  return AuditResult(max_change=worst, tolerance=tolerance, worst_cut=worst_cut)


@dataclasses.dataclass(frozen=True)
class ModelAudit:
  verdict: str  # "CAUSAL" or "LEAK" (`AuditResult.verdict`)
  max_logit_change: float
  tolerance: float
  pooling: str | None  # the router's pooling; None for a model without a router


@dataclasses.dataclass(frozen=True)
class Leak:
  """The measured leak of a sequence_mean router (`measure_leak`); `applies` False (and only a
  note) for any other model set."""

  applies: bool
  note: str | None = None
  # {"routed", PREFIX, "baseline": {domain or "all": PPL}}
  ppl: dict[str, dict[str, float]] | None = None
  num_batches: int | None = None
  tokens: float | None = None
  # {"routed", PREFIX: {domain or "all": 1 - PPL / PPL_baseline}}, where a baseline was trained.
  reduction_vs_baseline: dict[str, dict[str, float]] | None = None
  reduction_ci95: dict[str, tuple[float, float]] | None = None
  ci_method: str | None = None
  prefix_over_as_trained: dict[str, float] | None = None
  eval_stride: float | None = None


@dataclasses.dataclass(frozen=True)
class Causality:
  """The causality section: the audit of every model and the measured leak."""

  models: dict[str, ModelAudit]
  all_causal: bool
  note: str
  leak: Leak | None = None  # None in reports from before the leak was measured
  # {model (and PREFIX for a sequence_mean routed model): {"0-7", "8-63", "64+": PPL}}, the
  # held-out perplexity by position in the window; None in reports from before it was measured.
  ppl_by_position: dict[str, dict[str, float]] | None = None


def measure_leak(models: dict[str, Transformer], params: dict, batches, domains) -> Leak:
  """Perplexity of a sequence_mean routed model as trained and with prefix-only routing (the
  same params, pooling=causal_mean: what it sees when generating), beside its baseline.

  Uses `train.evaluate.evaluate_params`, so the numbers are the ones training's evaluation logs
  under `eval/routed_prefix/...`. Returns {"applies": False} for a model without the leak.
  """
  if "routed" not in models or evaluate.prefix_model(models["routed"].cfg) is None:
    return Leak(applies=False, note="no sequence_mean routed model: nothing leaks")
  windows = {}
  m = evaluate.evaluate_params(models, params, batches, domains, per_window=windows)
  names = [n for n in ("routed", PREFIX_ONLY, "baseline") if f"eval/{n}/perplexity" in m]
  present = [d for d in domains if f"eval/routed/{d}/perplexity" in m]
  ppl = {
    n: {"all": m[f"eval/{n}/perplexity"], **{d: m[f"eval/{n}/{d}/perplexity"] for d in present}}
    for n in names
  }
  out = {}
  if "baseline" in ppl:
    # Positive = lower perplexity than the baseline (the paper's sign).
    out["reduction_vs_baseline"] = {
      n: {k: 1.0 - v / ppl["baseline"][k] for k, v in ppl[n].items()}
      for n in ("routed", PREFIX_ONLY)
    }
    base_loss, tokens, _ = windows["baseline"]
    out["reduction_ci95"] = {
      n: paired_bootstrap_reduction(windows[n][0], base_loss, tokens)
      for n in ("routed", PREFIX_ONLY)
    }
    out["ci_method"] = f"paired bootstrap over {len(tokens)} held-out windows (2000 resamples)"
  return Leak(
    applies=True,
    ppl=ppl,
    num_batches=int(m["eval/batches"]),
    tokens=float(m["eval/routed/tokens"]),
    prefix_over_as_trained={k: v / ppl["routed"][k] for k, v in ppl[PREFIX_ONLY].items()},
    **out,
  )


def causality_report(
  run, *, seq_len: int | None = None, num_batches: int | None = None
) -> Causality:
  """The audit of every model in a loaded workdir and, for a sequence_mean routed model, the
  measured leak (`measure_leak`) over the held-out split (default: all of it)."""
  seq_len = seq_len or min(run.cfg.seq_len, 128)
  models = {}
  for name, model in run.models.items():
    result = audit_causality(
      model, run.params[name], vocab_size=model.cfg.vocab_size, seq_len=seq_len, seed=run.cfg.seed
    )
    models[name] = ModelAudit(
      verdict=result.verdict,
      max_logit_change=result.max_change,
      tolerance=result.tolerance,
      pooling=model.cfg.pooling if model.cfg.routing else None,
    )
  all_causal = all(m.verdict == "CAUSAL" for m in models.values())
  n = run.cfg.eval_batches if num_batches is None else num_batches
  leak = measure_leak(run.models, run.params, run.data.eval_batches(n or None), run.data.domains)
  if leak.applies:
    leak = dataclasses.replace(leak, eval_stride=run.data.eval_stride(n or None))
  by_position = {
    name: ppl_by_position(model, run.params[name], run.data.eval_batches(n or None))
    for name, model in run.models.items()
  }
  if leak.applies:  # the same routed params, pooling the prefix only
    by_position[PREFIX_ONLY] = ppl_by_position(
      evaluate.prefix_model(run.models["routed"].cfg),
      run.params["routed"],
      run.data.eval_batches(n or None),
    )
  note = (
    "All models are causal: perplexities are comparable with a causal LM."
    if all_causal
    else "NON-CAUSAL model(s): their logits at position t depend on tokens after t "
    "(the sequence-mean router), so their perplexity is not a causal LM's. The "
    "leak is measured, not bounded: the routed model's perplexity with prefix-only "
    "routing (what it sees when generating) is its causal number."
  )
  return Causality(
    models=models, all_causal=all_causal, note=note, leak=leak, ppl_by_position=by_position
  )


def claim_rows(r: Causality, report: dict) -> verdicts.Rows:
  """The claims this section tests (analysis/claims.py): `causal`, the audit's verdict (not a
  claim that can hold: the paper's router is non-causal), and `prefix`: the 95% interval of the
  prefix-only PPL reduction vs baseline (the control) lies above zero and above the untrained
  pair's (the ablation section's `reduction_at_init`); `verdicts.interval_verdict`."""
  out = {"causal": (r.models["routed"].verdict, None)}
  leak = r.leak
  if leak is None or not leak.applies:
    out["prefix"] = ("= as trained: this router already sees only the prefix", None)
    return out
  ab = report.get("ablation")
  at_init = (ab.control.reduction_at_init if ab is not None else None) or {}
  lp = leak.ppl
  lci = (leak.reduction_ci95 or {}).get(PREFIX_ONLY)
  lred = (leak.reduction_vs_baseline or {}).get(PREFIX_ONLY, {}).get("all")
  init_prefix = at_init.get(PREFIX_ONLY, {}).get("all", 0.0)
  out["prefix"] = (
    f"PPL {fmt(lp[PREFIX_ONLY]['all'])} prefix-only vs {fmt(lp['routed']['all'])} as "
    "trained"
    + (
      f" (baseline {fmt(lp['baseline']['all'])}): {verdicts.pct_ci(lred, lci)} vs "
      f"baseline; untrained pair {100 * init_prefix:+.1f}%"
      if lred is not None
      else ""
    ),
    verdicts.interval_verdict(*lci, init_prefix)
    if lci
    else verdicts.uninformative("no interval (older report)"),
  )
  return out


def markdown(r: Causality) -> str:
  rows = [
    [name, d.verdict, d.pooling, d.max_logit_change, d.tolerance] for name, d in r.models.items()
  ]
  out = [
    "**" + r.note + "**",
    "",
    table(["model", "audit", "pooling", "max |Δlogit| at t' <= t", "tolerance"], rows),
  ]
  leak = r.leak
  if leak is not None and leak.applies:
    ppl = leak.ppl
    cols = list(ppl["routed"])
    names = {
      "routed": "routed, as trained (sees the whole window)",
      PREFIX_ONLY: "routed, prefix-only routing (as when generating)",
      "baseline": "baseline",
    }
    rows = [[names[n]] + [ppl[n][c] for c in cols] for n in names if n in ppl]
    out += [
      "",
      f"Measured leak over {sample(leak.num_batches, leak.eval_stride)}: "
      "same parameters, the router given the prefix mean instead of the whole window's.",
      "",
      table(["model"] + [f"PPL {c}" for c in cols], rows),
    ]
    if leak.reduction_vs_baseline is not None:
      red = leak.reduction_vs_baseline
      ci = leak.reduction_ci95 or {}
      out += [
        "",
        "PPL reduction vs baseline: as trained "
        + pct_ci(red["routed"]["all"], ci.get("routed"))
        + "; prefix-only "
        + pct_ci(red[PREFIX_ONLY]["all"], ci.get(PREFIX_ONLY))
        + ".",
      ]
  if r.ppl_by_position:
    cols = list(next(iter(r.ppl_by_position.values())))
    out += [
      "",
      "Held-out perplexity by position in the window (token-weighted within each bucket):",
      "",
      table(
        ["model"] + [f"PPL positions {c}" for c in cols],
        [[name] + [by[c] for c in cols] for name, by in r.ppl_by_position.items()],
      ),
    ]
  return "\n".join(out)
