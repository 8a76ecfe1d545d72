"""An lm-evaluation-harness model (`--model dirroute`) serving any model of a workdir.

  lm_eval --model dirroute --model_args workdir=W,model=routed,routing=off --tasks arc_easy
  (or launch/lm_eval.py, which runs several models side by side and pairs them)

Importing this module registers "dirroute" with lm-eval (its `register_model` decorator);
lm-eval itself needs no torch for a custom model. Model args:

  workdir   a launch/train.py workdir; step   its checkpoint (default: the latest)
  model     routed | baseline | matched | sd (whatever the workdir trained)
  routing   as_trained (default) | off (every routing weight 0) | a number in [0, 1] (every
            weight fixed to it) | prefix: a sequence_mean router given only the prefix (the
            same params in a causal_mean model; what it can do when generating)
  batch_size  rows per jitted call (default 16); max_length  tokens the model sees (default
            the training seq_len; longer inputs keep their last max_length tokens)

How requests run (batched and jitted): sequences are right-padded to a few length buckets
(powers of two up to max_length) and the batch to `batch_size` rows, so one compilation per
bucket serves every request; a causal model's scores at real positions do not see the
padding. A `sequence_mean` router as trained pools the whole sequence, padding included, so
it is scored at each request's exact length (one compilation per distinct length) and
generates by re-pooling the prefix at every token; `routing=prefix` avoids both.
`generate_until` runs the KV-cache sampler batched: each row is fed its prompt one token per
step and then its own samples, so rows of different lengths share the cache position.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

try:
  from lm_eval import utils as lm_utils
  from lm_eval.api.model import TemplateLM
  from lm_eval.api.registry import register_model
except ImportError as e:  # one line, said where it is used (launch/lm_eval.py, tests)
  raise ImportError(f"lm-evaluation-harness does not import ({e}): pip install -e '.[eval]'") from e

from dirroute_jax.model import interventions as iv
from dirroute_jax.model import sampling
from dirroute_jax.model.transformer import Transformer, forward
from dirroute_jax.train.evaluate import prefix_model

ROUTING_CHOICES = ("as_trained", "off", "prefix", "<number in [0, 1]>")
_MIN_BUCKET = 32


def resolve(run, model_name: str, routing: str = "as_trained"):
  """(model, params, interventions or None) for `model_name` of a loaded workdir with the
  routing intervention `routing` (see the module docstring). ValueError on bad input."""
  if model_name not in run.models:
    raise ValueError(f"{run.path} has no model {model_name!r}; it has {', '.join(run.models)}.")
  model, params = run.models[model_name], run.params[model_name]
  routing = str(routing)
  if routing == "as_trained":
    return model, params, None
  if not model.cfg.routing:
    raise ValueError(f"routing={routing!r} needs a routed model; {model_name!r} has no router.")
  if routing == "prefix":
    twin = prefix_model(model.cfg)
    if twin is None:
      raise ValueError(
        f"routing=prefix is for a sequence_mean router; {model_name!r} pools "
        f"{model.cfg.pooling!r}, which is already prefix-only."
      )
    return twin, params, None
  if routing == "off":
    return model, params, iv.routing_off(model.cfg)
  try:
    value = float(routing)
  except ValueError:
    value = math.nan
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"routing={routing!r}: use one of {', '.join(ROUTING_CHOICES)}.")
  return model, params, iv.routing_fixed(model.cfg, value)


def bucket(n: int, max_length: int) -> int:
  """The padded length for a sequence of n tokens: the next power of two (>= 32), capped."""
  return min(max(_MIN_BUCKET, 1 << max(n - 1, 0).bit_length()), max_length)


@functools.partial(jax.jit, static_argnames=("model",))
def _token_logprobs(model: Transformer, params, interventions, inputs_BxT, targets_BxT):
  """log p(target_t | inputs_<=t) and whether the target is the argmax, per position."""
  logits_BxTxV, _ = forward(model, params, inputs_BxT, interventions=interventions)
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
  lp_BxT = jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return lp_BxT, jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT


@functools.partial(jax.jit, static_argnames=("model", "steps", "temperature", "top_k"))
def _generate_batch(
  model: Transformer,
  params,
  interventions,
  prompts_BxP,
  lengths_B,
  key,
  *,
  steps,
  temperature,
  top_k,
):
  """The KV-cache sampler over a batch of prompts of different lengths (right-padded).

  Step i feeds every row the token at position i: its prompt's while i < its length, else
  what it sampled at step i - 1. So all rows are at the same cache position (the cache keeps
  one index) and no padding ever enters the cache. Returns the token fed at each step, B x
  steps; row b's generation is the part from position lengths_B[b].
  """
  decoder = model.clone(decode=True)
  B, P = prompts_BxP.shape
  shapes = jax.eval_shape(
    lambda: decoder.apply(
      {"params": params}, jnp.zeros((B, steps), jnp.int32), interventions, mutable=["cache"]
    )[1]["cache"]
  )
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  prompts_BxS = jnp.pad(prompts_BxP, ((0, 0), (0, max(steps - P, 0))))[:, :steps]

  def step(carry, i):
    cache, picked_B = carry
    token_B = jnp.where(i < lengths_B, prompts_BxS[:, i], picked_B)
    logits_Bx1xV, state = decoder.apply(
      {"params": params, "cache": cache}, token_B[:, None], interventions, mutable=["cache"]
    )
    next_B = sampling._pick(
      logits_Bx1xV[:, 0],
      jax.random.fold_in(key, i),  # pylint: disable=protected-access
      temperature,
      top_k,
    )
    return (state["cache"], next_B), token_B

  _, tokens_SxB = jax.lax.scan(step, (cache, jnp.zeros((B,), jnp.int32)), jnp.arange(steps))
  return tokens_SxB.T


@register_model("dirroute")
class DirrouteLM(TemplateLM):
  """One model of a workdir as an lm-eval LM (see the module docstring for the args)."""

  def __init__(
    self,
    workdir: str | None = None,
    model: str = "routed",
    routing: str = "as_trained",
    step: int | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    seed: int = 0,
    run=None,
    **unused,
  ):
    super().__init__()
    if run is None:
      if workdir is None:
        raise ValueError("dirroute needs model_args workdir=DIR (a launch/train.py workdir).")
      from dirroute_jax.analysis.load import load_workdir  # pylint: disable=g-import-not-at-top

      run = load_workdir(workdir, step=None if step in (None, "") else int(step))
    self.run = run
    self.model_name, self.routing = model, str(routing)
    self.model, self.params, self.interventions = resolve(run, model, routing)
    self.tokenizer = run.tokenizer
    self.batch_size = int(batch_size) if str(batch_size) != "auto" else 16
    self.max_length = int(max_length or run.cfg.seq_len)
    self.seed = int(seed)
    # A sequence_mean router pools padding too: score it at exact lengths, no padding.
    self.causal = sampling.is_incremental(self.model)
    self.compiled_shapes: set[tuple[int, int]] = set()  # (rows, length) of each jitted call

  # -- lm-eval's tokenizer hooks --
  @property
  def eot_token_id(self) -> int:
    return self.tokenizer.eos_id

  @property
  def tokenizer_name(self) -> str:
    return f"dirroute-{self.tokenizer.fingerprint}"

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs):
    del add_special_tokens, kwargs  # the models were trained without BOS
    return self.tokenizer.encode(string)

  def tok_decode(self, tokens: Sequence[int], **kwargs) -> str:
    del kwargs
    return self.tokenizer.decode(tokens)

  # -- scoring --
  def token_logprobs(
    self, sequences: Sequence[Sequence[int]]
  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each token sequence s: (log p(s[t] | s[:t]) for t >= 1, greedy flags), float64.
    Sequences longer than max_length + 1 keep their last max_length + 1 tokens."""
    seqs = [list(s)[-(self.max_length + 1) :] for s in sequences]
    if any(len(s) < 2 for s in seqs):
      raise ValueError("scoring needs at least two tokens per sequence (a context token).")
    out: list = [None] * len(seqs)
    key = (
      (lambda i: bucket(len(seqs[i]) - 1, self.max_length))
      if self.causal
      else (lambda i: len(seqs[i]) - 1)
    )
    order = sorted(range(len(seqs)), key=lambda i: (-key(i), i))
    groups: dict[int, list[int]] = {}
    for i in order:
      groups.setdefault(key(i), []).append(i)
    for T, members in groups.items():
      for start in range(0, len(members), self.batch_size):
        rows = members[start : start + self.batch_size]
        inputs = np.full((self.batch_size, T), self.eot_token_id, np.int32)
        targets = np.zeros((self.batch_size, T), np.int32)
        for r, i in enumerate(rows):
          s = seqs[i]
          inputs[r, : len(s) - 1], targets[r, : len(s) - 1] = s[:-1], s[1:]
        self.compiled_shapes.add((self.batch_size, T))
        lp, greedy = _token_logprobs(
          self.model, self.params, self.interventions, jnp.asarray(inputs), jnp.asarray(targets)
        )
        lp, greedy = np.asarray(lp, np.float64), np.asarray(greedy)
        for r, i in enumerate(rows):
          n = len(seqs[i]) - 1
          out[i] = (lp[r, :n], greedy[r, :n])
    return out

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    del disable_tqdm, kwargs
    scored = self.token_logprobs([ctx + cont for _, ctx, cont in requests])
    results = []
    for (cache_key, _, cont), (lp, greedy) in zip(requests, scored):
      n = len(cont)
      answer = (float(lp[-n:].sum()), bool(greedy[-n:].all()))
      results.append(answer)
      if cache_key is not None and self.cache_hook is not None:
        self.cache_hook.add_partial("loglikelihood", cache_key, answer)
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Whole-text log-likelihood in disjoint windows of max_length tokens, the first one
    conditioned on EOS (what a document follows in training)."""
    del disable_tqdm
    windows, owner = [], []
    for k, (text,) in enumerate(req.args for req in requests):
      for ctx, cont in map(
        lm_utils.make_disjoint_window,
        lm_utils.get_rolling_token_windows(
          token_list=self.tok_encode(text),
          prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length,
          context_len=1,
        ),
      ):
        windows.append((ctx, cont))
        owner.append(k)
    totals = [0.0] * len(requests)
    for k, (_, cont), (lp, _) in zip(
      owner, windows, self.token_logprobs([c + t for c, t in windows])
    ):
      totals[k] += float(lp[-len(cont) :].sum())
    for req, total in zip(requests, totals):
      if self.cache_hook is not None:
        self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
    return totals

  # -- generation --
  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    del disable_tqdm
    results: list = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    parsed = []
    for k, req in enumerate(requests):
      context, gen_kwargs = req.args
      settings = _generation_settings(gen_kwargs, self.eot_token_id, self.tokenizer)
      groups.setdefault(settings[:3], []).append(k)
      parsed.append((context, settings))
    for (max_new, temperature, top_k), members in groups.items():
      members.sort(key=lambda k: -len(parsed[k][0]))
      for start in range(0, len(members), self.batch_size):
        rows = members[start : start + self.batch_size]
        prompts = [self.tok_encode(parsed[k][0]) or [self.eot_token_id] for k in rows]
        for k, new in zip(rows, self.generate_tokens(prompts, max_new, temperature, top_k)):
          until = parsed[k][1][3]
          text = self.tok_decode(new)
          for stop in until:
            if stop and stop in text:
              text = text[: text.index(stop)]
          results[k] = text
          if self.cache_hook is not None:
            self.cache_hook.add_partial("generate_until", requests[k].args, text)
    return results

  def generate_tokens(
    self,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
  ) -> list[list[int]]:
    """Each prompt's `max_new_tokens` continuation (greedy at temperature 0), cut at EOS.
    Prompts keep their last max_length - max_new_tokens tokens (at least one)."""
    keep = max(self.max_length - max_new_tokens, 1)
    prompts = [list(p)[-keep:] for p in prompts]
    key = jax.random.key(self.seed)
    if not self.causal:  # re-pools the prefix per token: sampling.sample, one row at a time
      outs = [
        sampling.sample(
          self.model,
          self.params,
          p,
          max_new_tokens=max_new_tokens,
          temperature=temperature,
          top_k=top_k,
          seed=self.seed,
        ).tokens
        for p in prompts
      ]
    else:
      outs = []
      for start in range(0, len(prompts), self.batch_size):
        chunk = prompts[start : start + self.batch_size]
        P = bucket(max(map(len, chunk)), self.max_length)
        padded = np.zeros((self.batch_size, P), np.int32)
        lengths = np.full((self.batch_size,), 1, np.int32)
        for r, p in enumerate(chunk):
          padded[r, : len(p)], lengths[r] = p, len(p)
        steps = P + max_new_tokens  # the last step's own pick is not needed; one wasted step
        self.compiled_shapes.add((self.batch_size, steps))
        fed = np.asarray(
          _generate_batch(
            self.model,
            self.params,
            self.interventions,
            jnp.asarray(padded),
            jnp.asarray(lengths),
            key,
            steps=steps,
            temperature=float(temperature),
            top_k=int(top_k),
          )
        )
        for r, p in enumerate(chunk):
          # Position i holds the token fed at step i: the prompt, then what was sampled.
          outs.append(list(fed[r, len(p) : len(p) + max_new_tokens]))
    cut = []
    for new in outs:
      new = [int(t) for t in new]
      cut.append(new[: new.index(self.eot_token_id)] if self.eot_token_id in new else new)
    return cut


def _generation_settings(gen_kwargs: dict, eos_id: int, tokenizer) -> tuple:
  """(max_new_tokens, temperature, top_k, until strings) from lm-eval's gen_kwargs."""
  kw = dict(gen_kwargs or {})
  until = kw.pop("until", None) or []
  if isinstance(until, str):
    until = [until]
  max_new = int(kw.pop("max_gen_toks", 256))
  do_sample = bool(kw.pop("do_sample", False))
  temperature = float(kw.pop("temperature", 0.0)) if do_sample else 0.0
  top_k = int(kw.pop("top_k", 0) or 0) if do_sample else 0
  until = tuple(until) + (tokenizer.decode([eos_id]),)
  return max_new, temperature, top_k, until
