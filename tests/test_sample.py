"""Text generation: the cached (incremental) decoder equals a full forward at every position,
greedy decoding agrees with it, the seed fixes the text, and the launcher runs."""

import copy
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dirroute_jax.model import sampling
from dirroute_jax.model.transformer import build_model, forward, init_params
from dirroute_jax.model.variants import model_configs
from dirroute_jax.train.samples import md_escape

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]


def _model(tiny_cfg, name="routed", **model_overrides):
  cfg = copy.deepcopy(tiny_cfg)
  cfg.models = "routed,baseline,sd"
  for k, v in model_overrides.items():
    cfg.model[k] = v
  model = build_model(model_configs(cfg)[name])
  return model, init_params(model, jax.random.key(7))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["routed", "baseline", "sd"])
def test_cached_logits_equal_full_forward_at_every_position(tiny_cfg, name):
  model, params = _model(tiny_cfg, name)
  assert sampling.is_incremental(model)
  s = sampling.sample(model, params, PROMPT, max_new_tokens=12, temperature=1.0, top_k=50, seed=3)
  assert s.incremental and len(s.tokens) == 12
  full_logits_TxV = forward(model, params, jnp.asarray([PROMPT + s.tokens]))[0][0]
  # The logits token i was drawn from are the full forward's at the position before it.
  np.testing.assert_allclose(
    s.logits_NxV, full_logits_TxV[len(PROMPT) - 1 : -1], atol=2e-5, rtol=1e-5
  )


@pytest.mark.slow
def test_greedy_cached_equals_greedy_full_forward(trained_workdir):
  from dirroute_jax.analysis.load import load_workdir

  run = load_workdir(trained_workdir)
  prompt = run.tokenizer.encode("def ")
  for name in run.models:
    cached = sampling.sample(
      run.models[name], run.params[name], prompt, max_new_tokens=5, temperature=0.0
    )
    full = sampling.sample(
      run.models[name],
      run.params[name],
      prompt,
      max_new_tokens=5,
      temperature=0.0,
      incremental=False,
    )
    assert cached.incremental and not full.incremental
    assert cached.tokens == full.tokens
    np.testing.assert_allclose(cached.logits_NxV, full.logits_NxV, atol=2e-5, rtol=1e-5)


def test_same_seed_same_text_other_seed_other_text(tiny_cfg):
  model, params = _model(tiny_cfg)
  draw = lambda seed: (
    sampling.sample(model, params, PROMPT, max_new_tokens=16, temperature=1.0, seed=seed).tokens
  )
  assert draw(0) == draw(0)
  assert draw(0) != draw(1)


def test_top_k_one_is_greedy(tiny_cfg):
  model, params = _model(tiny_cfg)
  greedy = sampling.sample(model, params, PROMPT, max_new_tokens=8, temperature=0.0)
  top1 = sampling.sample(model, params, PROMPT, max_new_tokens=8, temperature=1.5, top_k=1, seed=5)
  assert top1.tokens == greedy.tokens


def test_sequence_mean_repools_the_prefix_every_step(tiny_cfg):
  model, params = _model(tiny_cfg, pooling="sequence_mean")
  assert not sampling.is_incremental(model)
  s = sampling.sample(model, params, PROMPT, max_new_tokens=3, temperature=0.0)
  assert not s.incremental
  tokens = list(PROMPT)
  last_logits = jax.jit(lambda p, t: forward(model, p, t)[0][0, -1])
  for i, token in enumerate(s.tokens):  # each step is the forward over exactly the prefix
    logits_V = last_logits(params, jnp.asarray([tokens]))
    np.testing.assert_allclose(s.logits_NxV[i], logits_V, atol=2e-5, rtol=1e-5)
    assert token == int(jnp.argmax(logits_V))
    tokens.append(token)
  with pytest.raises(ValueError, match="sequence_mean"):
    sampling.sample(model, params, PROMPT, max_new_tokens=2, incremental=True)


def test_bad_arguments_are_clear_errors(tiny_cfg):
  model, params = _model(tiny_cfg)
  with pytest.raises(ValueError, match="at least one token"):
    sampling.sample(model, params, [], max_new_tokens=4)
  with pytest.raises(ValueError, match="temperature"):
    sampling.sample(model, params, PROMPT, max_new_tokens=4, temperature=-1.0)


def test_launcher_prints_every_model_side_by_side(trained_workdir):
  cmd = [
    sys.executable,
    os.path.join(REPO, "launch", "sample.py"),
    f"--workdir={trained_workdir}",
    "--prompt=The ",
    "--max_new_tokens=12",
    "--seed=4",
  ]
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
  assert "=== routed (incremental) ===\nThe " in done.stdout
  assert "=== baseline (incremental) ===\nThe " in done.stdout
  assert "Given directory is read only" not in done.stdout + done.stderr


def test_forward_accepts_a_list_of_token_lists(tiny_cfg):
  """What a user naturally passes (the README once did, and forward crashed on it)."""
  model, params = _model(tiny_cfg)
  from_list, _ = forward(model, params, [PROMPT])
  np.testing.assert_array_equal(from_list, forward(model, params, jnp.asarray([PROMPT]))[0])


def _tensorboard_values(logdir):
  """(step, tag, plugin, value) of every summary value in the event files (TFRecord framing:
  length, its CRC, the Event proto, its CRC)."""
  import struct

  from tensorboardX.proto import event_pb2

  out = []
  for name in sorted(os.listdir(logdir)):
    data = open(os.path.join(logdir, name), "rb").read()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        out.append((event.step, v.tag, v.metadata.plugin_data.plugin_name, v))
  return out


def test_eval_samples_and_config_go_to_tensorboard(trained_workdir, tmp_path):
  from dirroute_jax.analysis.load import load_workdir
  from dirroute_jax.train.metrics import MetricsWriter
  from dirroute_jax.train.samples import config_hparams, write_eval_samples

  run = load_workdir(trained_workdir)
  writer = MetricsWriter(str(tmp_path))
  writer.hparams(config_hparams(run.cfg), ["eval/routed/perplexity"])
  write_eval_samples(writer, 40, run.models, run.params, run.tokenizer, ("def ", "The "), 8)
  writer.close()
  values = _tensorboard_values(str(tmp_path / "tensorboard"))
  texts = {
    tag: v.tensor.string_val[0].decode()
    for step, tag, _, v in values
    if tag.startswith("samples/") and step == 40
  }
  assert set(texts) == {"samples/routed/text_summary", "samples/baseline/text_summary"}
  greedy = sampling.sample(
    run.models["routed"],
    run.params["routed"],
    run.tokenizer.encode("The "),
    max_new_tokens=8,
    temperature=0.0,
  )
  assert texts["samples/routed/text_summary"].startswith("**def **")
  assert texts["samples/routed/text_summary"].endswith(
    "**The **" + md_escape(run.tokenizer.decode(greedy.tokens))
  )
  assert any(plugin == "hparams" for _, _, plugin, _ in values)
  hp = config_hparams(run.cfg)
  assert hp["model.pooling"] == run.cfg.model.pooling and hp["steps"] == run.cfg.steps
