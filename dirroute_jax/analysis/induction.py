"""Induction on repeated random tokens: accuracy with and without routing, and induction heads.

The paper reports induction accuracy 93.4% with routing, 0.0% with routing off, and 98.6% after
knocking out the strongest induction head, without saying how the sequences were built or how
the head was ablated. Our protocol (all of it is in this file):

Sequences. Each sequence is one random block of `doc_len` distinct tokens, drawn uniformly
without replacement from `token_range` = [lo, hi) minus the tokenizer's EOS, repeated `repeats`
times back to back: T = doc_len * repeats, no BOS (training windows are cut from a packed
stream and have none either). Distinct tokens make "the previous occurrence of token t" unique,
so the induction target is always exactly t - doc_len + 1. The draw is a pure function of
`seed`.

Accuracy. Top-1 (argmax over the real vocabulary) accuracy of predicting token t + 1 at every
position t in a repeat (t >= doc_len; t = doc_len - 1 is excluded because predicting the first
token of a repeat needs more than induction). The null is chance, 1 / (number of tokens a block
is drawn from); the in-model control is the same accuracy on the first, unrepeated block, where
nothing better than chance is possible.

Induction score of a head: its mean attention from query t (t >= doc_len) to key
t - doc_len + 1 (the token right after the previous occurrence of token t), averaged over
sequences and positions. Its null is a head spreading its attention uniformly over the causal
prefix, which scores mean_t 1 / (t + 1).

Knockout. Zero ablation (head output before W_O set to 0 at every position) of the head with
the highest induction score, measured per model with its routing on. Its control is the median
accuracy over single-head knockouts of every other head: knocking out an arbitrary head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dirroute_jax.analysis import plots, verdicts
from dirroute_jax.analysis import result as result_lib
from dirroute_jax.analysis.load import as_workdir
from dirroute_jax.analysis.markdown import fmt, table
from dirroute_jax.analysis.verdicts import yes_no
from dirroute_jax.model import interventions as iv_lib
from dirroute_jax.model.transformer import forward

PAPER = {
  "routed_accuracy": 0.934,
  "routed_accuracy_routing_off": 0.0,
  "routed_accuracy_strongest_head_knocked_out": 0.986,
}


@dataclasses.dataclass(frozen=True)
class ModelInduction:
  accuracy: float
  first_block_accuracy: float  # control: the first block cannot be copied
  accuracy_routing_off: float | None  # None for a model without a router
  induction_scores: list[list[float]]  # L x H
  induction_scores_routing_off: list[list[float]] | None  # None without a router
  strongest_head: tuple[int, int]  # (layer, head)
  strongest_score: float
  accuracy_strongest_head_knocked_out: float
  knockout_accuracy: list[list[float]]  # L x H: each head knocked out alone
  knockout_control_median_other_heads: float | None  # None with a single head


@dataclasses.dataclass(frozen=True)
class Null:
  chance_accuracy: float
  uniform_attention_induction_score: float
  knockout_control: str
  routing_control: str


@dataclasses.dataclass(frozen=True)
class Induction:
  """The induction section, every model on the same repeated random sequences."""

  models: dict[str, ModelInduction]
  protocol: dict[str, Any]
  null: Null
  paper: dict[str, Any]


def repeated_random_tokens(
  num_seqs: int, doc_len: int, repeats: int, pool_P: np.ndarray, seed: int
) -> np.ndarray:
  """num_seqs x (doc_len * repeats) int32: a block of distinct tokens from pool_P, tiled."""
  if doc_len > len(pool_P):
    raise ValueError(
      f"doc_len={doc_len} exceeds the {len(pool_P)} tokens it is drawn from; "
      "the tokens of a block must be distinct."
    )
  rng = np.random.default_rng(seed)
  blocks_NxW = np.stack([rng.choice(pool_P, doc_len, replace=False) for _ in range(num_seqs)])
  return np.tile(blocks_NxW, (1, repeats)).astype(np.int32)


def induction_scores(pattern_BxHxTxT, doc_len: int) -> np.ndarray:
  """Per-head (H,) mean attention from query t >= doc_len to key t - doc_len + 1."""
  pattern = np.asarray(pattern_BxHxTxT, np.float32)
  T = pattern.shape[-1]
  if T <= doc_len:
    raise ValueError(f"no repeated positions: T={T} <= doc_len={doc_len}")
  q_Q = np.arange(doc_len, T)
  return pattern[:, :, q_Q, q_Q - doc_len + 1].mean(axis=(0, 2))


def uniform_attention_score(T: int, doc_len: int) -> float:
  """The induction score of a head attending uniformly to its causal prefix (the null)."""
  return float(np.mean(1.0 / (np.arange(doc_len, T) + 1.0)))


def _neutral(model_cfg) -> iv_lib.Interventions:
  """All intervention fields present but inactive: one compiled program for every variant."""
  return iv_lib.routing_fixed(model_cfg, 0.0, layers=[]).merge(iv_lib.knockout_heads(model_cfg, []))


def induction(
  run,
  *,
  doc_len: int | None = None,
  repeats: int = 2,
  num_seqs: int = 64,
  token_range: tuple[int, int] | None = None,
  seed: int = 0,
  batch_size: int = 32,
) -> Induction:
  """Induction accuracy, per-head induction scores and strongest-head knockout, both models.

  Args:
    run: a `Workdir` (or its path).
    doc_len: tokens per random block; default min(50, seq_len // repeats), so sequences fit the
      trained context.
    repeats: how many times the block occurs (>= 2).
    num_seqs: number of random sequences.
    token_range: [lo, hi) of token ids a block is drawn from; default the whole real
      vocabulary. The tokenizer's EOS is always excluded.
    seed: seed of the token draw.
    batch_size: sequences per forward pass (memory only; results do not depend on it).

  Returns:
    `Induction`: per model (`ModelInduction`) the accuracy with its first-block control, with
    routing off (routed only), per-head induction scores, the strongest head and its knockout
    beside every other head's; the chance and uniform-attention nulls.
  """
  run = as_workdir(run)
  if repeats < 2:
    raise ValueError("repeats must be >= 2: induction needs a repeat.")
  vocab = int(run.cfg.model.vocab_size)
  doc_len = int(doc_len or min(50, int(run.cfg.seq_len) // repeats))
  lo, hi = token_range if token_range is not None else (0, vocab)
  eos = getattr(run.tokenizer, "eos_id", None)
  pool_P = np.array([t for t in range(int(lo), int(hi)) if t != eos], np.int64)
  tokens_NxT = repeated_random_tokens(num_seqs, doc_len, repeats, pool_P, seed)
  T = tokens_NxT.shape[1]
  chance = 1.0 / len(pool_P)

  models = {
    name: _model_induction(model, run.params[name], tokens_NxT, doc_len, vocab, batch_size)
    for name, model in run.models.items()
  }
  protocol = {
    "construction": "block of doc_len distinct tokens drawn uniformly from token_range "
    "(EOS excluded), repeated `repeats` times; no BOS",
    "doc_len": doc_len,
    "repeats": repeats,
    "num_seqs": num_seqs,
    "seq_len": T,
    "token_range": [int(lo), int(hi)],
    "tokens_drawn_from": int(len(pool_P)),
    "seed": seed,
    "scored_positions_per_seq": T - 1 - doc_len,
    "accuracy": "top-1 over the real vocabulary of token t+1 at positions t >= doc_len",
    "induction_score": "mean attention from query t >= doc_len to key t - doc_len + 1",
    "knockout": "zero ablation of the head output before W_O, routing on",
  }
  null = Null(
    chance_accuracy=chance,
    uniform_attention_induction_score=uniform_attention_score(T, doc_len),
    knockout_control="knockout_control_median_other_heads (per model)",
    routing_control="the baseline model (no routing) on the same sequences",
  )
  return Induction(models=models, protocol=protocol, null=null, paper=dict(PAPER))


def _model_induction(
  model, params, tokens_NxT: np.ndarray, doc_len: int, vocab: int, batch_size: int
) -> ModelInduction:
  cfg = model.cfg
  L, H = cfg.num_layers, cfg.num_heads
  neutral = _neutral(cfg)

  @jax.jit
  def predict(p, tokens_BxT, iv):
    logits_BxTxV, _ = forward(model, p, tokens_BxT, interventions=iv)
    return jnp.argmax(logits_BxTxV[..., :vocab], axis=-1)

  capture = tuple(f"blocks.{l}.attn.pattern" for l in range(L))

  @jax.jit
  def scores(p, tokens_BxT, iv):
    _, acts = forward(model, p, tokens_BxT, interventions=iv, capture=capture)
    T = tokens_BxT.shape[1]
    q_Q = jnp.arange(doc_len, T)
    # Summed (not averaged) over the batch so that batches of any size combine exactly.
    return jnp.stack(
      [
        acts[f"blocks.{l}.attn.pattern"][:, :, q_Q, q_Q - doc_len + 1].sum(axis=(0, 2))
        for l in range(L)
      ]
    )

  chunks = [tokens_NxT[i : i + batch_size] for i in range(0, len(tokens_NxT), batch_size)]

  def accuracy(iv, first_block=False):
    correct = total = 0
    for chunk in chunks:
      pred_BxT = np.asarray(predict(params, chunk, iv))
      sl = slice(0, doc_len - 1) if first_block else slice(doc_len, chunk.shape[1] - 1)
      hit = pred_BxT[:, :-1][:, sl] == chunk[:, 1:][:, sl]
      correct, total = correct + int(hit.sum()), total + hit.size
    return correct / total

  def head_scores(iv):
    total_LxH = sum(np.asarray(scores(params, chunk, iv), np.float64) for chunk in chunks)
    return total_LxH / (len(tokens_NxT) * (tokens_NxT.shape[1] - doc_len))

  def knock(l, h):
    return neutral.merge(iv_lib.knockout_heads(cfg, [(l, h)]))

  off = neutral.merge(iv_lib.routing_off(cfg))
  scores_LxH = head_scores(neutral)
  l_best, h_best = (int(i) for i in np.unravel_index(np.argmax(scores_LxH), scores_LxH.shape))
  knockout_LxH = np.array([[accuracy(knock(l, h)) for h in range(H)] for l in range(L)])
  others = np.delete(knockout_LxH.ravel(), l_best * H + h_best)
  return ModelInduction(
    accuracy=accuracy(neutral),
    first_block_accuracy=accuracy(neutral, first_block=True),
    accuracy_routing_off=accuracy(off) if cfg.routing else None,
    induction_scores=scores_LxH.tolist(),
    induction_scores_routing_off=head_scores(off).tolist() if cfg.routing else None,
    strongest_head=(l_best, h_best),
    strongest_score=float(scores_LxH[l_best, h_best]),
    accuracy_strongest_head_knocked_out=float(knockout_LxH[l_best, h_best]),
    knockout_accuracy=knockout_LxH.tolist(),
    knockout_control_median_other_heads=float(np.median(others)) if others.size else None,
  )


def capability_gate(r: Induction) -> str | None:
  """Why there is no induction to test, or None: the routed model's and the baseline's
  accuracy both within `verdicts.CAPABILITY_OVER_CHANCE` x chance. A routed model at chance
  beside a baseline that induces is a result (routing lost the capability), not a gate."""
  chance = r.null.chance_accuracy
  accs = {n: m.accuracy for n, m in r.models.items() if n in ("routed", "baseline")}
  if all(verdicts.at_chance(a, chance) for a in accs.values()):
    return (
      "no induction: accuracy "
      + ", ".join(f"{n} {100 * a:.2f}%" for n, a in accs.items())
      + f" vs chance {100 * chance:.2f}% (gate >= {verdicts.CAPABILITY_OVER_CHANCE:g}x chance)"
    )
  return None


def claim_rows(r: Induction, report: dict) -> verdicts.Rows:
  """The claims this section tests (analysis/claims.py), both gated on induction existing
  (`capability_gate`; below it "uninformative at this scale"):

    induction     accuracy > 50% with routing and < 10% without; control: the baseline's
                  accuracy (no router) and the first block's (nothing to copy).
    induction_ko  accuracy after knocking out the strongest induction head >= 90% of the
                  intact accuracy (and that > 50%); control: the median other single-head
                  knockout."""
  del report  # every number is this section's
  ind = r.models["routed"]
  base = r.models.get("baseline")
  gate = capability_gate(r)
  base_text = f"; baseline {100 * base.accuracy:.2f}%" if base is not None else ""
  return {
    "induction": (
      f"{100 * ind.accuracy:.2f}% / {_pct(ind.accuracy_routing_off)}{base_text}"
      f" (chance {100 * r.null.chance_accuracy:.2f}%)",
      verdicts.uninformative(gate)
      if gate
      else yes_no(
        ind.accuracy > 0.5
        and ind.accuracy_routing_off is not None
        and ind.accuracy_routing_off < 0.1
      ),
    ),
    "induction_ko": (
      f"{100 * ind.accuracy_strongest_head_knocked_out:.2f}% (median other head "
      f"{_pct(ind.knockout_control_median_other_heads)})",
      verdicts.uninformative(gate)
      if gate
      else yes_no(
        ind.accuracy_strongest_head_knocked_out >= 0.9 * ind.accuracy and ind.accuracy > 0.5
      ),
    ),
  }


def _pct(x) -> str:
  return "n/a" if x is None else f"{100 * x:.2f}%"


def _na(x) -> str:
  """A number, or "n/a" where it does not apply (None)."""
  return "n/a" if x is None else fmt(x)


def markdown(r: Induction) -> str:
  routed, base, null, paper = r.models["routed"], r.models["baseline"], r.null, r.paper
  rows = [
    [
      "induction accuracy (repeated half)",
      paper["routed_accuracy"],
      routed.accuracy,
      base.accuracy,
      f"chance {fmt(null.chance_accuracy)}; first block {fmt(routed.first_block_accuracy)}",
    ],
    [
      "... routing off",
      paper["routed_accuracy_routing_off"],
      _na(routed.accuracy_routing_off),
      "n/a",
      "the baseline row above",
    ],
    [
      "... strongest induction head knocked out",
      paper["routed_accuracy_strongest_head_knocked_out"],
      routed.accuracy_strongest_head_knocked_out,
      base.accuracy_strongest_head_knocked_out,
      f"median other single-head knockout {_na(routed.knockout_control_median_other_heads)}"
      f" / {_na(base.knockout_control_median_other_heads)}",
    ],
    [
      "strongest head (layer, head): score",
      "",
      f"{tuple(routed.strongest_head)}: {fmt(routed.strongest_score)}",
      f"{tuple(base.strongest_head)}: {fmt(base.strongest_score)}",
      f"uniform attention {fmt(null.uniform_attention_induction_score)}",
    ],
  ]
  p = r.protocol
  return (
    table(["claim", "paper", "routed", "baseline", "null / control"], rows)
    + f"\n\nProtocol: {p['construction']}; doc_len {p['doc_len']}, repeats "
    f"{p['repeats']}, {p['num_seqs']} sequences; {p['knockout']}."
  )


def figures(r: Induction) -> dict:
  """Induction score per layer and head, one panel per model, on one colour scale."""
  models = result_lib.models(r)
  if not models:
    return {}
  # Constrained layout and one shared "layer" label: the second panel's label used to sit
  # on the first panel's tick labels.
  fig, axes = plots.plt.subplots(
    1, len(models), figsize=(4 * len(models), 3), sharey=True, layout="constrained"
  )
  axes = np.atleast_1d(axes)
  vmax = max(float(np.max(m.induction_scores)) for m in models.values())
  for ax, (name, m) in zip(axes, models.items()):
    scores_LxH = np.asarray(m.induction_scores)
    im = ax.imshow(scores_LxH, vmin=0, vmax=vmax, cmap="viridis")
    ax.set_title(f"{name}: induction score")
    ax.set_xlabel("head")
    plots.integer_ticks(ax.xaxis, scores_LxH.shape[1])
    plots.integer_ticks(ax.yaxis, scores_LxH.shape[0])
  axes[0].set_ylabel("layer")
  fig.colorbar(
    im,
    ax=list(axes),
    shrink=0.8,
    label=f"uniform-attention null = {r.null.uniform_attention_induction_score:.3f}",
  )
  return {"induction_heads": fig}
