"""Hugging Face export (dirroute_jax/export/hf.py, launch/export.py): the exported folder runs
the same function in transformers (float32 within 1e-4, bf16 within a stated tolerance) and in
TransformerLens, and its tokenizer gives our ids on every domain of the corpus.

Tests that need torch / transformers / transformer-lens skip without them (`.[hf]` extras)."""

import json
import os
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from dirroute_jax.data import sources
from dirroute_jax.data import tokenizers as tok_lib
from dirroute_jax.export import hf
from dirroute_jax.model.transformer import build_model, forward, init_params
from dirroute_jax.model.variants import model_variant

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The float32 parity the issue asks for; measured: 2.4e-7 (random tiny baseline), see below.
F32_ATOL = 1e-4
# bf16 weights, bf16 compute in torch vs our float32 forward of the float32 weights: the
# difference is bf16's rounding of weights and activations (8 bits of mantissa), so it is
# stated relative to the logits' spread: max |diff| <= 0.05 * std(logits) + 0.02 (measured
# on the tiny random baseline: ~0.01 * std).
BF16_REL, BF16_ABS = 0.05, 0.02


def _hf_offline(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
  monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _random_run(tiny_cfg, name="baseline", tokenizer=None, seed=0):
  """A tiny model with random params and non-default Llama knobs: a padded vocab, RoPE theta,
  RMSNorm eps and norm scales away from 1, so a mapping that ignores any of them fails."""
  cfg = tiny_cfg
  cfg.models = "routed,baseline,matched"
  cfg.model.vocab_size, cfg.model.vocab_pad_multiple = 257, 64
  cfg.model.rope_theta, cfg.model.norm_eps = 5000.0, 1e-5
  cfg.seq_len = 64
  model = build_model(model_variant(cfg.model, name))
  params = init_params(model, jax.random.key(seed))
  noise = iter(jax.random.split(jax.random.key(seed + 1), 64))
  params = jax.tree_util.tree_map_with_path(
    lambda path, x: (
      x * (1 + 0.2 * jax.random.normal(next(noise), x.shape))
      if "scale" in jax.tree_util.keystr(path)
      else x
    ),
    params,
  )
  return types.SimpleNamespace(
    path="random",
    step=0,
    cfg=cfg,
    models={name: model},
    params={name: params},
    tokenizer=tokenizer or tok_lib.ByteTokenizer(),
  )


def _tokens(vocab, shape=(2, 48), seed=0):
  return np.random.RandomState(seed).randint(0, vocab, shape).astype(np.int32)


def test_routed_model_is_a_one_line_error(tiny_cfg, tmp_path):
  run = _random_run(tiny_cfg, "routed")
  with pytest.raises(hf.ExportError, match="no Hugging Face architecture.*--models=routed"):
    hf.export_run(run, "routed", str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  with pytest.raises(hf.ExportError, match="has no model 'matched'"):
    hf.export_run(run, "matched", str(tmp_path / "out"))


def test_safetensors_written_with_numpy_only_read_back(tiny_cfg, tmp_path):
  """The folder's files without any HF package: names, shapes, the dropped padded rows."""
  run = _random_run(tiny_cfg)
  done = hf.export_run(run, "baseline", str(tmp_path))
  assert done.dropped_vocab_rows == 320 - 257
  raw = (tmp_path / "model.safetensors").read_bytes()
  n = int.from_bytes(raw[:8], "little")
  header = json.loads(raw[8 : 8 + n])
  assert (8 + n) % 8 == 0 and header["__metadata__"]["format"] == "pt"
  emb = header["model.embed_tokens.weight"]
  assert emb["dtype"] == "F32" and emb["shape"] == [257, 64]
  start, end = emb["data_offsets"]
  got = np.frombuffer(raw[8 + n + start : 8 + n + end], "<f4").reshape(257, 64)
  np.testing.assert_array_equal(got, np.asarray(run.params["baseline"]["embed"]["embedding"])[:257])
  assert "lm_head.weight" not in header  # tied
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["tie_word_embeddings"] and config["rms_norm_eps"] == 1e-5
  assert config["rope_parameters"]["rope_theta"] == 5000.0 and config["head_dim"] == 16
  assert config["eos_token_id"] == 256
  for name in ("generation_config.json", "tokenizer.json", "tokenizer_config.json"):
    assert (tmp_path / name).exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """The random tiny baseline and matched baseline, exported in float32 and bf16."""
  from dirroute_jax.config import load_config_file

  out = {}
  for name in ("baseline", "matched"):
    run = _random_run(load_config_file(os.path.join(REPO, "configs", "tiny.py")), name)
    for dtype in ("float32", "bfloat16"):
      path = str(tmp_path_factory.mktemp(f"{name}_{dtype}"))
      hf.export_run(run, name, path, dtype=dtype)
      out[name, dtype] = (run, path)
  return out


@pytest.mark.parametrize("name", ["baseline", "matched"])
def test_float32_logits_equal_transformers(exported, name, monkeypatch):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  _hf_offline(monkeypatch)
  run, path = exported[name, "float32"]
  model = transformers.AutoModelForCausalLM.from_pretrained(path)
  assert type(model).__name__ == "LlamaForCausalLM"
  assert model.dtype == torch.float32
  tokens = _tokens(257)
  ours = np.asarray(forward(run.models[name], run.params[name], tokens)[0])
  with torch.no_grad():
    theirs = model(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
  assert theirs.shape == (2, 48, 257)  # the padded rows are not in the export
  np.testing.assert_allclose(theirs, ours[..., :257], rtol=0, atol=F32_ATOL)


def test_bf16_logits_within_stated_tolerance(exported, monkeypatch):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  _hf_offline(monkeypatch)
  run, path = exported["baseline", "bfloat16"]
  model = transformers.AutoModelForCausalLM.from_pretrained(path)
  assert model.dtype == torch.bfloat16
  tokens = _tokens(257)
  ours = np.asarray(forward(run.models["baseline"], run.params["baseline"], tokens)[0])[..., :257]
  with torch.no_grad():
    theirs = model(torch.as_tensor(tokens, dtype=torch.long)).logits.float().numpy()
  diff = np.abs(theirs - ours).max()
  assert diff <= BF16_REL * ours.std() + BF16_ABS, (diff, ours.std())


def test_transformer_lens_bridge_resid_post_equals_ours(exported, monkeypatch):
  torch = pytest.importorskip("torch")
  pytest.importorskip("transformer_lens")
  from transformer_lens.model_bridge import TransformerBridge

  _hf_offline(monkeypatch)
  run, path = exported["baseline", "float32"]
  bridge = TransformerBridge.boot_transformers(path, device="cpu")
  tokens = _tokens(257, seed=1)
  L = run.cfg.model.num_layers
  last = f"blocks.{L - 1}.resid_post"
  ours_logits, acts = forward(
    run.models["baseline"], run.params["baseline"], tokens, capture=(last,)
  )
  with torch.no_grad():
    logits, cache = bridge.run_with_cache(torch.as_tensor(tokens, dtype=torch.long))
  np.testing.assert_allclose(
    cache[f"blocks.{L - 1}.hook_resid_post"].numpy(), np.asarray(acts[last]), rtol=0, atol=F32_ATOL
  )
  np.testing.assert_allclose(
    logits.numpy(), np.asarray(ours_logits)[..., :257], rtol=0, atol=F32_ATOL
  )


# -- tokenizers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus_docs(tmp_path_factory):
  """Every document of a small embedded corpus (all three domains, both splits) and a BPE
  trained on its training split."""
  from dirroute_jax.config import default_config

  data_cfg = default_config().data
  data_cfg.max_bytes_per_domain = 300_000
  corpus = sources.make_corpus(data_cfg, str(tmp_path_factory.mktemp("cache")))
  docs = list(corpus.iter_docs())
  assert {d for _, d, _ in docs} == set(range(len(corpus.domains)))
  bpe = tok_lib.BPETokenizer.train(corpus.texts("train"), 1024)
  return corpus.domains, docs, bpe


# Text as the corpus readers make it from bytes that are not valid UTF-8 (errors="replace"),
# plus text that spells the EOS token, which our tokenizers keep as ordinary text.
_INVALID_UTF8 = [
  b"caf\xe9 na\xefve \xff\xfe\x80 ok",
  b"\xc3\x28 \xe2\x82 \xf0\x9f\x98",
  b"tab\there \xed\xa0\x80 end",
]
_SPECIAL_TEXT = "a <|endoftext|> b<|endoftext|>"


@pytest.mark.parametrize("which", ["bpe", "gpt2", "bytes"])
def test_exported_tokenizer_gives_our_ids_on_every_domain(
  corpus_docs, which, tmp_path, monkeypatch
):
  transformers = pytest.importorskip("transformers")
  _hf_offline(monkeypatch)
  domains, docs, bpe = corpus_docs
  ours = {"bpe": bpe, "gpt2": tok_lib.GPT2Tokenizer(), "bytes": tok_lib.ByteTokenizer()}[which]
  (tmp_path / "tokenizer.json").write_text(hf.tokenizer_json(ours), encoding="utf-8")
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(hf.tokenizer_config(ours, 64)))
  theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert theirs.eos_token_id == ours.eos_id
  seen = set()
  for _, domain, text in docs:
    assert theirs(text)["input_ids"] == ours.encode(text), domains[domain]
    seen.add(domains[domain])
  assert seen == set(domains)
  for raw in _INVALID_UTF8:
    text = raw.decode("utf-8", errors="replace")
    ids = ours.encode(text)
    assert theirs(text)["input_ids"] == ids
    assert theirs.decode(ids) == ours.decode(ids) == text
  assert theirs(_SPECIAL_TEXT)["input_ids"] == ours.encode(_SPECIAL_TEXT)
  assert ours.eos_id not in ours.encode(_SPECIAL_TEXT)
  # Single tokens that hold part of a UTF-8 character decode the same way (U+FFFD).
  ids = ours.encode("\u00e9\u4e2d\U0001f600 x")
  for i in ids:
    assert theirs.decode([i]) == ours.decode([i])
  assert theirs.decode(ids + [ours.eos_id]) == ours.decode(ids + [ours.eos_id])


# -- a trained workdir, through the launcher ---------------------------------------------------


def _launch(*args):
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
    [sys.executable, os.path.join(REPO, "launch", "export.py"), *args],
    capture_output=True,
    text=True,
    env=env,
  )


def test_launcher_exports_the_trained_baseline_equal_on_held_out_text(
  trained_workdir, tmp_path, monkeypatch
):
  out = tmp_path / "hf"
  done = _launch(f"--workdir={trained_workdir}", "--model=routed", f"--out={out}")
  assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
  assert "no Hugging Face architecture" in done.stderr and not out.exists()
  done = _launch(f"--workdir={trained_workdir}", "--model=baseline", f"--out={out}")
  assert done.returncode == 0, done.stderr
  assert "Exported baseline (step 80" in done.stdout
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  _hf_offline(monkeypatch)
  from dirroute_jax.analysis.load import load_workdir

  run = load_workdir(trained_workdir)
  tok = transformers.AutoTokenizer.from_pretrained(str(out))
  model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
  batch = next(run.data.eval_batches(1))
  window = np.asarray(batch["inputs"])[:2]
  text = run.tokenizer.decode(window[0][window[0] != run.tokenizer.eos_id][:40])
  assert tok(text)["input_ids"] == run.tokenizer.encode(text)
  ours = np.asarray(forward(run.models["baseline"], run.params["baseline"], window)[0])
  with torch.no_grad():
    theirs = model(torch.as_tensor(window, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(theirs, ours[..., : run.cfg.model.vocab_size], rtol=0, atol=F32_ATOL)
