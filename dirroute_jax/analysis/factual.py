"""Factual recall under routing ablation, direct logit attribution, and the mover head (METHOD.md).

The paper reports that with routing disabled its 8 factual prompts ("The capital of France is"
-> " Paris", ...) get near-zero probability; that the direct logit attribution (DLA) of " Paris"
is embedding -0.12 / heads -4.94 / routing delta +25.57 / MLPs -3.81; and that knocking out the
"mover head" (strongest attention from the last position to the subject) RAISES P(target)
(x1.07). This module measures all three for every model of a trained set, on a prompt file the
user can replace (`prompts/factual.json`).

Protocol choices (the paper leaves them open):
  * Tokenisation and score. The target is tokenised in context: its ids are the tokens of
    `prompt + target` after the prompt's own tokens (falling back to `encode(target)` when the
    prompt's tokens are not a prefix); `target_tokens` lists them. "P(target)" is the WHOLE
    word: exp of the teacher-forced sum of the log-probabilities of all its tokens, each scored
    by a forward on its own prefix only (so the non-causal sequence-mean router never sees the
    tokens it is scored on). "rank" is the first token's rank at the prompt's last position
    (1 = argmax). A target is flagged `at_chance` when P(target) < 10 x V**-(its token count),
    the uniform guess. Mover-head knockout ratios use the whole-word P as well; the DLA
    decomposes the first target token's logit (a logit is one token's).
  * Subject position. With a subword tokenizer the subject's tokens are found by encoding the
    prompt's text up to and including the FIRST occurrence of `subject`; its last token is at
    index len(encode(prefix)) - 1. `subject_aligned` is False when that encoding is not a prefix
    of the prompt's encoding (BPE merged the subject's last piece with the following text); the
    position then points at the token that contains the subject's end.
  * Batching. Causal models (baseline, causal-mean router) score all prompts in one right-padded
    batch (padding after position t cannot change position t); the sequence-mean router pools
    the whole sequence, so its prompts are only batched with prompts of the same length.
  * DLA at the prompt's last position, of the first target token's logit: `dla.py` (the
    decomposition, its mean-logit null, and its table and figure in this section).
  * Mover head = argmax over (layer, head) of the attention from the last position to the
    subject position (as trained). Knockout replaces the head's output before W_O at every
    position by zero or by its mean `z_routed` over held-out tokens (as trained). Null: the
    same knockout of every other head (`knockout_ratios_*`, L x H) and their median; the mover
    head's percentile among them per prompt, and a p-value of the mean percentile over prompts
    against heads picked at random.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dirroute_jax.analysis import dla, verdicts
from dirroute_jax.analysis import result as result_lib
from dirroute_jax.analysis.forward import complete, token_weighted_mean
from dirroute_jax.analysis.markdown import fmt, table
from dirroute_jax.analysis.verdicts import yes_no
from dirroute_jax.model import interventions as iv_lib
from dirroute_jax.model.transformer import Transformer, forward

DEFAULT_PROMPTS = os.path.join(
  os.path.dirname(os.path.abspath(__file__)), "prompts", "factual.json"
)

# The paper's numbers (433M model): compare directions of effects, not magnitudes.
PAPER = {
  "p_target_routing_off": "near zero on all 8 prompts",
  "dla_paris": dict(dla.PAPER_PARIS),
  "mover_knockout_p_ratio": 1.07,
}

# A target is "at chance" when P(whole word) is below 10x the uniform guess V**-n_tokens.
AT_CHANCE_LOG = math.log(10.0)

_CAPTURE = dla.CAPTURE + ("blocks.*.attn.pattern",)  # the pattern finds the mover head


@dataclasses.dataclass(frozen=True)
class Score:
  """One prompt's target under one condition."""

  p_target: float  # the whole word's probability
  rank: int  # the first token's rank (1 = argmax)
  target_logprob: float | None = None  # None in older reports (another definition)
  p_first_token: float | None = None
  at_chance: bool | None = None  # None in older reports (read as not at chance)


@dataclasses.dataclass(frozen=True)
class PromptResult:
  prompt: str
  target: str
  subject: str
  prompt_tokens: int
  target_ids: list[int]
  target_first_token: str
  subject_position: int
  subject_aligned: bool
  last_position: int
  as_trained: Score
  routing_off: Score
  dla: dict[str, Any]  # dla.attribute: the parts of the first target token's logit
  dla_mean_logit: dict[str, Any]  # the same parts of the mean logit (the null)
  # layer, head, attention, and per knockout mode m ("zero", "mean"): percentile_m,
  # p_m_ablated, ratio_m, null_ratio_m_median, knockout_ratios_m (L x H).
  mover_head: dict[str, Any]
  subject_token: str | None = None  # None in older reports
  target_tokens: list[str] | None = None
  chance_logprob: float | None = None


@dataclasses.dataclass(frozen=True)
class ConditionSummary:
  """Means over prompts under one condition."""

  mean_p_target: float
  max_p_target: float
  median_rank: float
  mean_target_logprob: float | None = None  # None in older reports
  num_at_chance: int | None = None  # None in older reports


@dataclasses.dataclass(frozen=True)
class Summary:
  """One model's averages over prompts, each next to its null (`_summary`)."""

  chance_p: float
  as_trained: ConditionSummary
  routing_off: ConditionSummary
  geomean_p_ratio_off_vs_trained: float
  mean_dla: dict[str, float]  # dla.summarize
  mean_dla_mean_logit: dict[str, float]
  mean_dla_relative_to_mean_logit: dict[str, float]
  mover_ratio_zero_geomean: float
  null_ratio_zero_geomean: float | None
  mean_chance_p_target: float | None = None  # None in older reports
  mover_percentile_zero_mean: float | None = None
  mover_p_value_zero: float | None = None
  # The mean-ablation knockout; None where it was not run (no held-out batches).
  mover_ratio_mean_geomean: float | None = None
  null_ratio_mean_geomean: float | None = None
  mover_percentile_mean_mean: float | None = None
  mover_p_value_mean: float | None = None


@dataclasses.dataclass(frozen=True)
class ModelFactual:
  prompts: list[PromptResult]
  summary: Summary


@dataclasses.dataclass(frozen=True)
class Factual:
  """The factual section: recall, DLA and the mover head, every model on the same prompts."""

  paper: dict[str, Any]
  num_prompts: int
  models: dict[str, ModelFactual]
  prompts_path: str | None = None
  protocol: dict[str, Any] | None = None


def load_prompts(path: str = DEFAULT_PROMPTS) -> list[dict]:
  """A JSON list of {prompt, target, subject}, or {"prompts": [...]} (other keys ignored)."""
  try:
    with open(path) as f:
      data = json.load(f)
  except OSError as e:
    raise ValueError(f"cannot read the prompt file {path!r}: {e.strerror or e}") from None
  except json.JSONDecodeError as e:
    raise ValueError(
      f"the prompt file {path!r} is not valid JSON ({e}); it must be a list of "
      '{"prompt", "target", "subject"} objects or {"prompts": [...]}'
    ) from None
  prompts = data.get("prompts") if isinstance(data, dict) else data
  if not isinstance(prompts, list) or not prompts:
    raise ValueError(
      f"the prompt file {path!r} holds no prompts: give a non-empty list of "
      '{"prompt", "target", "subject"} objects or {"prompts": [...]}'
    )
  for p in prompts:
    if not isinstance(p, dict):
      raise ValueError(f"bad prompt entry {p!r} in {path!r}: each entry is an object")
    missing = {"prompt", "target", "subject"} - set(p)
    if missing or p["subject"] not in p["prompt"]:
      raise ValueError(f"bad prompt entry {p!r}: needs prompt/target/subject, subject in prompt")
  return prompts


def subject_position(tokenizer, prompt: str, subject: str) -> tuple[int, bool]:
  """(index of the subject's last token in encode(prompt), whether the encodings align)."""
  end = prompt.index(subject) + len(subject)
  prefix_ids = tokenizer.encode(prompt[:end])
  return len(prefix_ids) - 1, tokenizer.encode(prompt)[: len(prefix_ids)] == prefix_ids


def target_ids(tokenizer, prompt_ids: Sequence[int], prompt: str, target: str) -> list[int]:
  """The target's tokens in context (see module doc)."""
  both = tokenizer.encode(prompt + target)
  if both[: len(prompt_ids)] == list(prompt_ids) and len(both) > len(prompt_ids):
    return both[len(prompt_ids) :]
  return tokenizer.encode(target)


def find_mover_head(pattern_LxHxTxT: np.ndarray, query_pos: int, key_pos: int) -> dict:
  """The (layer, head) attending most from `query_pos` to `key_pos` (first one on ties)."""
  a_LxH = np.asarray(pattern_LxHxTxT)[:, :, query_pos, key_pos]
  l, h = np.unravel_index(int(np.argmax(a_LxH)), a_LxH.shape)
  return {"layer": int(l), "head": int(h), "attention": float(a_LxH[l, h])}


def is_causal(model_cfg) -> bool:
  """Whether position t's logits depend only on tokens <= t (so right padding is exact)."""
  return not (model_cfg.routing and model_cfg.pooling == "sequence_mean")


def _groups(rows: list[list[int]], causal: bool):
  """[(row indices, tokens_BxT, last positions_B)]: one padded group, or one per length."""
  lengths = np.array([len(r) for r in rows])
  keys = [None] if causal else sorted(set(lengths.tolist()))
  for key in keys:
    idx = np.arange(len(rows)) if key is None else np.flatnonzero(lengths == key)
    tokens = np.zeros((len(idx), int(lengths[idx].max())), np.int32)
    for i, r in enumerate(idx):
      tokens[i, : lengths[r]] = rows[r]
    yield idx, tokens, (lengths[idx] - 1).astype(np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _score(model: Transformer, params, tokens_BxT, pos_B, label_B, iv):
  """(log P(label), rank of label; 1 = argmax) at each row's position `pos`."""
  logits_BxTxV, _ = forward(model, params, tokens_BxT, interventions=iv)
  last_BxV = jnp.take_along_axis(logits_BxTxV, pos_B[:, None, None], axis=1)[
    :, 0, : model.cfg.vocab_size
  ]
  logp_BxV = jax.nn.log_softmax(last_BxV)
  label_logit_B = jnp.take_along_axis(last_BxV, label_B[:, None], axis=1)
  logp_B = jnp.take_along_axis(logp_BxV, label_B[:, None], axis=1)[:, 0]
  return logp_B, 1 + jnp.sum(last_BxV > label_logit_B, axis=1)


@functools.partial(jax.jit, static_argnums=0)
def _capture(model: Transformer, params, tokens_BxT, iv):
  return forward(model, params, tokens_BxT, interventions=iv, capture=_CAPTURE)


@functools.partial(jax.jit, static_argnums=0)
def _z_routed_sums(model: Transformer, params, inputs_BxT, weights_BxT):
  _, acts = forward(model, params, inputs_BxT, capture=("blocks.*.attn.z_routed",))
  z_LxBxTxHxDh = jnp.stack([acts[f"blocks.{l}.attn.z_routed"] for l in range(model.cfg.num_layers)])
  return jnp.einsum("lbthd,bt->lhd", z_LxBxTxHxDh.astype(jnp.float32), weights_BxT)


def score_rows(model: Transformer, params, rows, labels, iv) -> tuple[np.ndarray, np.ndarray]:
  """(log P(label), rank of label) at each token row's last position.

  The jitted functions take the model as a static argument (Linen modules hash by config), so
  one compile per batch shape serves every condition and every later call.
  """
  logp, rank = np.zeros(len(rows)), np.zeros(len(rows), np.int64)
  for idx, tokens, pos in _groups(rows, is_causal(model.cfg)):
    lp, rk = jax.device_get(
      _score(model, params, tokens, pos, np.asarray(labels, np.int32)[idx], iv)
    )
    logp[idx], rank[idx] = lp, rk
  return logp, rank


def capture_rows(model: Transformer, params, rows, iv) -> list[tuple[int, np.ndarray, dict]]:
  """Per token row: (last position, logits there, {name: this row's activation})."""
  out = [None] * len(rows)
  for idx, tokens, pos in _groups(rows, is_causal(model.cfg)):
    logits, acts = jax.device_get(_capture(model, params, tokens, iv))
    for i, r in enumerate(idx):
      out[r] = (int(pos[i]), logits[i, pos[i]], {k: v[i] for k, v in acts.items()})
  return out


def head_means(model: Transformer, params, batches) -> np.ndarray:
  """Mean of `attn.z_routed` (L x H x Dh) over held-out tokens with weight 1, as trained."""
  mean = token_weighted_mean(
    lambda b: (_z_routed_sums(model, params, b["inputs"], b["weights"]), np.sum(b["weights"])),
    batches,
  )
  return np.asarray(mean).astype(np.float32)


def _prompt_rows(tokenizer, prompts):
  """Token rows: row 0 of prompt i is the prompt; row j the prompt + the first j target ids."""
  info, rows, labels, owner = [], [], [], []
  for i, p in enumerate(prompts):
    ids = tokenizer.encode(p["prompt"])
    tgt = target_ids(tokenizer, ids, p["prompt"], p["target"])
    subj, aligned = subject_position(tokenizer, p["prompt"], p["subject"])
    info.append(
      {
        "prompt": p["prompt"],
        "target": p["target"],
        "subject": p["subject"],
        "prompt_tokens": len(ids),
        "target_ids": [int(t) for t in tgt],
        "target_first_token": tokenizer.decode([tgt[0]]),
        "target_tokens": [tokenizer.decode([t]) for t in tgt],
        "subject_position": subj,
        "subject_token": tokenizer.decode([ids[subj]]),
        "subject_aligned": bool(aligned),
        "last_position": len(ids) - 1,
      }
    )
    for j, t in enumerate(tgt):
      rows.append(ids + tgt[:j])
      labels.append(t)
      owner.append((i, j))
  return info, rows, labels, owner


def mean_percentile_p_value(
  observed: float, n: int, *, draws: int = 20_000, seed: int = 0
) -> float:
  """P(mean of n uniform percentiles >= observed): how often heads picked at random would rank
  at least this high among the other heads' knockouts (one-sided, Monte Carlo)."""
  means = np.random.default_rng(seed).random((draws, n)).mean(1)
  return float((1 + np.sum(means >= observed)) / (1 + draws))


def _geomean(x) -> float:
  x = np.asarray(x, np.float64)
  return float(np.exp(np.mean(np.log(x)))) if x.size else float("nan")


def factual_recall(
  models: dict[str, Transformer],
  params: dict,
  tokenizer,
  prompts: list[dict],
  mean_batches: list[dict] | None = None,
  *,
  null_heads: bool = True,
) -> Factual:
  """Per model: per-prompt results and a summary (see `factual`).

  `mean_batches`: held-out batches for the mean-ablation values; None skips mean ablation.
  `null_heads`: also knock out every other head (the null for the mover head).
  """
  info, rows, labels, owner = _prompt_rows(tokenizer, prompts)
  first = [k for k, (_, j) in enumerate(owner) if j == 0]
  rows_of = [[k for k, (o, _) in enumerate(owner) if o == i] for i in range(len(prompts))]
  out = {}
  for name, model in models.items():
    cfg, prm = model.cfg, params[name]
    L, H = cfg.num_layers, cfg.num_heads
    conds = {"as_trained": complete(cfg), "routing_off": complete(cfg, iv_lib.routing_off(cfg))}
    scored = {c: score_rows(model, prm, rows, labels, iv) for c, iv in conds.items()}
    caps = capture_rows(model, prm, [rows[k] for k in first], conds["as_trained"])
    means = None if mean_batches is None else head_means(model, prm, mean_batches)
    modes = ["zero"] + ([] if means is None else ["mean"])
    # knock[mode][l, h] = log P(first target token) per prompt with head (l, h) knocked out.
    heads = [(l, h) for l in range(L) for h in range(H)]
    knock = {m: np.full((L, H, len(prompts)), np.nan) for m in modes}
    movers = []
    for i, p in enumerate(info):
      pos, _, acts = caps[i]
      pattern = np.stack([acts[f"blocks.{l}.attn.pattern"] for l in range(L)])
      movers.append(find_mover_head(pattern, pos, p["subject_position"]))
    wanted = heads if null_heads else sorted({(m["layer"], m["head"]) for m in movers})
    for l, h in wanted:
      for m in modes:
        iv = complete(cfg, iv_lib.knockout_heads(cfg, [(l, h)], None if m == "zero" else means))
        # All rows, not just the first-token ones: one compiled shape serves every condition.
        logp = score_rows(model, prm, rows, labels, iv)[0]
        knock[m][l, h] = [np.sum(logp[ks]) for ks in rows_of]

    per_prompt, null_ratios = [], {m: [] for m in modes}
    for i, p in enumerate(info):
      entry = dict(p)
      entry["chance_logprob"] = -len(p["target_ids"]) * math.log(cfg.vocab_size)
      for c, (logp, rank) in scored.items():
        ks = rows_of[i]
        word = float(np.sum(logp[ks]))
        entry[c] = {
          "p_target": math.exp(word),
          "target_logprob": word,
          "p_first_token": math.exp(logp[ks[0]]),
          "rank": int(rank[ks[0]]),
          "at_chance": word < entry["chance_logprob"] + AT_CHANCE_LOG,
        }
      pos, logits_V, acts = caps[i]
      target = p["target_ids"][0]
      entry.update(dla.attribute(cfg, prm, acts, pos, target, logits_V[target]))
      mv = dict(movers[i])
      base_logp = entry["as_trained"]["target_logprob"]
      for m in modes:
        ratio_LxH = np.exp(knock[m][:, :, i] - base_logp)
        others = np.delete(ratio_LxH.ravel(), mv["layer"] * H + mv["head"])
        others = others[~np.isnan(others)]
        null_ratios[m].extend(others.tolist())
        # Where the mover head's knockout falls among every other head's (1 = above all).
        mv[f"percentile_{m}"] = (
          float(np.mean(others < ratio_LxH[mv["layer"], mv["head"]])) if others.size else None
        )
        mv[f"p_{m}_ablated"] = math.exp(knock[m][mv["layer"], mv["head"], i])
        mv[f"ratio_{m}"] = float(ratio_LxH[mv["layer"], mv["head"]])
        mv[f"null_ratio_{m}_median"] = float(np.median(others)) if others.size else None
        mv[f"knockout_ratios_{m}"] = [
          [None if np.isnan(x) else float(x) for x in row] for row in ratio_LxH
        ]
      entry["mover_head"] = mv
      per_prompt.append(entry)
    # Built as dicts (dla.py and _summary read them so), typed here: a key that is not a
    # field fails now, not in the report.
    out[name] = ModelFactual(
      prompts=[result_lib.from_json(PromptResult, e, f"factual.{name}") for e in per_prompt],
      summary=result_lib.from_json(
        Summary, _summary(per_prompt, null_ratios, cfg.vocab_size), f"factual.{name}"
      ),
    )
  return Factual(paper=PAPER, num_prompts=len(prompts), models=out)


def _summary(per_prompt: list[dict], null_ratios: dict[str, list[float]], vocab_size: int) -> dict:
  """Averages over prompts, each next to its null (`null_ratios[mode]`: the knockout ratios
  of every non-mover head over all prompts)."""
  col = lambda f: [f(e) for e in per_prompt]
  out = {
    "chance_p": 1.0 / vocab_size,
    "mean_chance_p_target": float(np.mean(col(lambda e: math.exp(e["chance_logprob"])))),
  }
  for c in ("as_trained", "routing_off"):
    out[c] = {
      "mean_p_target": float(np.mean(col(lambda e: e[c]["p_target"]))),  # noqa: B023
      "max_p_target": float(np.max(col(lambda e: e[c]["p_target"]))),  # noqa: B023
      "median_rank": float(np.median(col(lambda e: e[c]["rank"]))),  # noqa: B023
      "mean_target_logprob": float(np.mean(col(lambda e: e[c]["target_logprob"]))),  # noqa: B023
      "num_at_chance": int(sum(col(lambda e: e[c]["at_chance"]))),  # noqa: B023
    }
  out["geomean_p_ratio_off_vs_trained"] = _geomean(
    col(lambda e: e["routing_off"]["p_target"] / e["as_trained"]["p_target"])
  )
  out.update(dla.summarize(per_prompt))
  for m, nulls in null_ratios.items():
    out[f"mover_ratio_{m}_geomean"] = _geomean(col(lambda e: e["mover_head"][f"ratio_{m}"]))  # noqa: B023
    out[f"null_ratio_{m}_geomean"] = _geomean(nulls) if nulls else None
    pct = [x for x in col(lambda e: e["mover_head"].get(f"percentile_{m}")) if x is not None]  # noqa: B023
    if pct:
      out[f"mover_percentile_{m}_mean"] = float(np.mean(pct))
      out[f"mover_p_value_{m}"] = mean_percentile_p_value(float(np.mean(pct)), len(pct))
  return out


def factual(
  run,
  prompts_path: str = DEFAULT_PROMPTS,
  *,
  num_batches: int | None = None,
  null_heads: bool = True,
) -> Factual:
  """Factual recall, DLA and mover-head knockout for a loaded workdir (see module doc).

  Returns `Factual`: per model, every prompt's scores as trained and with routing off, its
  DLA and mover head, and the summary over prompts beside the nulls. Mean ablation uses the
  first `num_batches` held-out batches (default `cfg.eval_batches`).
  """
  n = run.cfg.eval_batches if num_batches is None else num_batches
  result = factual_recall(
    run.models,
    run.params,
    run.tokenizer,
    load_prompts(prompts_path),
    list(run.data.eval_batches(n)),
    null_heads=null_heads,
  )
  return dataclasses.replace(
    result,
    prompts_path=os.path.abspath(prompts_path),
    protocol={
      "p_target": "whole target: exp(sum of the log-probs of all its tokens, teacher-forced, "
      "each scored on its own prefix); rank = the first token's (1 = argmax)",
      "at_chance": "P(target) < 10 x V**-(number of target tokens)",
      "mover_p_value": "mover head's knockout percentile among all other heads, averaged over "
      "prompts, against the mean of uniform percentiles",
      "subject_position": "last token of encode(prompt up to and including the subject)",
      "dla": "final RMSNorm 1/rms frozen from the real forward; parts sum to the logit",
      "mover_head": "argmax attention last position -> subject, as trained",
      "knockout": "head output before W_O replaced at every position (zero / held-out mean)",
      "mean_batches": n,
      "checkpoint_step": int(run.step),
    },
  )


# Real recall, the gate of every claim of this section: the target's first token ranked in
# the top RECALL_MAX_MEDIAN_RANK (median over prompts) by the routed model as trained. "Above
# chance" (P > 10 x uniform) is not recall: any unigram model passes it, and a first-token
# rank of ~150 of 2,048 is a frequency guess, with no recall for routing-off to collapse.
RECALL_MAX_MEDIAN_RANK = 10

# The random-held-out-words control factual_off needs: routing off cuts P(word) for any word
# (it raises PPL overall), so a 10x drop on facts says something about facts only beside the
# drop on random held-out words in the same frames. The result does not measure it.
MISSING_WORD_CONTROL = (
  "no control on random held-out words (routing off raises PPL overall; a drop on facts "
  "needs the same drop measured on non-facts)"
)


def recall_gate(fs: Summary) -> str | None:
  """Why the routed model as trained shows no factual recall to dissect, or None if it does."""
  rank = fs.as_trained.median_rank
  if rank is None or not rank <= RECALL_MAX_MEDIAN_RANK:
    return (
      f"no recall as trained: median first-token rank {fmt(rank)} (gate <= "
      f"{RECALL_MAX_MEDIAN_RANK}), mean P(word) {fmt(fs.as_trained.mean_p_target)}"
    )
  return None


def claim_rows(r: Factual, report: dict) -> verdicts.Rows:
  """The claims this section tests (analysis/claims.py). Each is gated on real recall in the
  routed model as trained (`recall_gate`: median first-token rank <= RECALL_MAX_MEDIAN_RANK);
  below the gate every row is "uninformative at this scale", with the gate in its verdict.

    factual_off  routing off cuts mean P(word) 10x. Control: the baseline's P (no router) and
                 random held-out words, which the result does not measure: a 10x drop is
                 therefore "uninformative" (control named), never "holds"; a smaller drop
                 does not hold.
    dla          the routing delta is the largest DLA part (minus the mean-logit null) and
                 above 1 logit.
    mover        the mover knockout raises P and ranks high among every head's (p < 0.05;
                 the control is every other head's knockout).
  """
  del report  # every number is this section's
  out = {}
  fs = result_lib.model(r).summary
  base = result_lib.model(r, "baseline")
  on, off = fs.as_trained.mean_p_target, fs.routing_off.mean_p_target
  n_prompts = r.num_prompts
  at_chance = fs.as_trained.num_at_chance if fs.as_trained.num_at_chance is not None else n_prompts
  gate = recall_gate(fs)
  base_text = f"; baseline {fmt(base.summary.as_trained.mean_p_target)}" if base else ""
  text = (
    f"mean P(word) {fmt(on)} -> {fmt(off)}{base_text}; median first-token rank "
    f"{fmt(fs.as_trained.median_rank)}; at chance as trained {at_chance}/{n_prompts}"
  )
  if gate:
    verdict = verdicts.uninformative(gate)
  elif off < 0.1 * on:
    verdict = verdicts.uninformative(MISSING_WORD_CONTROL)
  else:
    verdict = verdicts.DOES_NOT_HOLD
  out["factual_off"] = (text, verdict)
  rel = dla.relative(fs)
  out["dla"] = (
    " / ".join(f"{rel[p]:+.2f}" for p in dla.PARTS),
    verdicts.uninformative(gate)
    if gate
    else yes_no(
      rel["routing_delta"] > 1.0 and rel["routing_delta"] == max(rel[p] for p in dla.PARTS)
    ),
  )
  pct, pval = fs.mover_percentile_zero_mean, fs.mover_p_value_zero
  out["mover"] = (
    f"x{fs.mover_ratio_zero_geomean:.2f} (other heads x"
    f"{fs.null_ratio_zero_geomean:.2f}; mean percentile among heads "
    f"{fmt(pct)}, p = {fmt(pval)})",
    verdicts.uninformative(gate)
    if gate
    else yes_no(fs.mover_ratio_zero_geomean > 1.0 and pval is not None and pval < 0.05),
  )
  return out


def markdown(r: Factual) -> str:
  paper = r.paper
  rows = []
  for name, m in r.models.items():
    s = m.summary
    rows.append(
      [
        name,
        s.as_trained.mean_p_target,
        s.routing_off.mean_p_target,
        f"{s.as_trained.num_at_chance} / {s.routing_off.num_at_chance}",
        s.as_trained.median_rank,
        s.routing_off.median_rank,
        s.mover_ratio_zero_geomean,
        s.null_ratio_zero_geomean,
        s.mover_percentile_zero_mean,
        s.mover_p_value_zero,
        s.mover_ratio_mean_geomean,
        s.null_ratio_mean_geomean,
      ]
    )
  chance = lambda c: " (AT CHANCE)" if c.at_chance else ""
  per_prompt = [
    [
      p.prompt,
      p.target,
      " | ".join(repr(t) for t in p.target_tokens),
      p.subject_token,
      f"{fmt(p.as_trained.p_target)}{chance(p.as_trained)}",
      f"{fmt(p.routing_off.p_target)}{chance(p.routing_off)}",
      math.exp(p.chance_logprob),
      p.as_trained.rank,
      f"L{p.mover_head['layer']}H{p.mover_head['head']}",
      p.mover_head["ratio_zero"],
    ]
    for p in r.models["routed"].prompts
  ]
  return "\n".join(
    [
      table(
        [
          "model",
          "mean P(target word)",
          "... routing off",
          "# at chance (trained / off)",
          "median first-token rank",
          "... routing off",
          "mover KO P ratio (zero)",
          "null (other heads)",
          "mover percentile among heads",
          "p-value",
          "mover KO ratio (mean)",
          "null",
        ],
        rows,
      ),
      f"\nP(target word) is the product of the probabilities of all the target's tokens "
      f"(teacher-forced); AT CHANCE marks P < 10x the uniform guess V^-n. Paper: P(target) with "
      f"routing off {paper['p_target_routing_off']}; mover-head knockout raises P "
      f"(x{paper['mover_knockout_p_ratio']}).",
      "",
      dla.markdown(paper, _summaries(r)),
      "",
      table(
        [
          "prompt",
          "target",
          "scored tokens",
          "subject token",
          "P routed",
          "P routing off",
          "chance",
          "first-token rank",
          "mover head",
          "KO ratio",
        ],
        per_prompt,
      ),
    ]
  )


def figures(r: Factual) -> dict:
  return {"factual_dla": dla.figure(r.paper, _summaries(r))}


def _summaries(r: Factual) -> dict[str, Summary]:
  return {name: m.summary for name, m in r.models.items()}
