"""Text samples from the models of a run: side by side for launch/sample.py, and into
TensorBoard at evaluation steps (with the run's config as TensorBoard hparams)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import ml_collections

from dirroute_jax.data.tokenizers import Tokenizer
from dirroute_jax.model import sampling


def sample_models(
  models: dict, params: dict, tokenizer: Tokenizer, prompt: str, **settings
) -> dict[str, sampling.Sample]:
  """One sample per model from the same prompt and seed (`settings` go to sampling.sample)."""
  tokens = tokenizer.encode(prompt)
  if not tokens:
    raise ValueError("the prompt encodes to no tokens; give a non-empty --prompt.")
  return {name: sampling.sample(models[name], params[name], tokens, **settings) for name in models}


def write_eval_samples(
  writer,
  step: int,
  models: dict,
  params: dict,
  tokenizer: Tokenizer,
  prompts: Sequence[str],
  max_new_tokens: int,
) -> None:
  """Greedy continuations of `prompts` by every model, as TensorBoard text `samples/<model>`."""
  host_params = jax.device_get(params)  # on one device: sampling is tiny next to training
  texts = {name: [] for name in models}
  for prompt in prompts:
    for name, s in sample_models(
      models, host_params, tokenizer, prompt, max_new_tokens=max_new_tokens, temperature=0.0
    ).items():
      texts[name].append(f"**{md_escape(prompt)}**{md_escape(tokenizer.decode(s.tokens))}")
  for name, lines in texts.items():
    writer.text(step, f"samples/{name}", "\n\n".join(lines))


def config_hparams(cfg: ml_collections.ConfigDict) -> dict:
  """The config flattened to TensorBoard hparam values (bool, int, float or str)."""
  flat = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, (dict, ml_collections.ConfigDict)):
        walk(v, f"{prefix}{k}.")
      else:
        flat[prefix + k] = v if isinstance(v, (bool, int, float, str)) else str(v)

  walk(cfg, "")
  return flat


def md_escape(text: str) -> str:
  # TensorBoard renders text as markdown: keep code and whitespace readable.
  return text.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_").replace("\n", "  \n")
