"""Shared configuration defaults and validation.

Every `configs/*.py` starts from `default_config()` and overrides sizes. Keys that users, tests
and scripts rely on are stable: `model.routing`, `model.pooling`, `model.num_directions`,
`model.router_temperature`, `seed`, `steps`, `batch_size`, `seq_len`, `log_every`,
`eval_every`, `checkpoint_every`, `data.source`, `mesh.data`, `mesh.fsdp`, `mesh.tensor`.

Choices the paper leaves open are marked [reconstructed] (METHOD.md) and stay configurable.
"""

from __future__ import annotations

import re

import ml_collections

POOLINGS = ("causal_mean", "sequence_mean")
ROUTER_INPUTS = ("normed", "residual")
ROUTER_ACTIVATIONS = ("gelu", "relu", "silu", "tanh")
DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots")
ATTENTIONS = ("dot", "sd")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "splash")
NORMS = ("rms", "none")


def default_model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.vocab_size = 50257
  # Rows added to the embedding so the vocab is a multiple of this (MXU/tensor-core friendly).
  # Padded logits are masked to -1e9, so the model's distribution is over `vocab_size` only.
  m.vocab_pad_multiple = 1
  m.d_model = 256
  m.num_layers = 4
  m.num_heads = 4
  m.head_dim = 64
  m.d_ff = 688
  m.rope_theta = 10_000.0
  m.norm_eps = 1e-6
  m.init_std = 0.02
  m.dtype = "float32"  # compute dtype; params are always float32 (master weights)
  # Rematerialisation per block: "none" keeps every activation for the backward pass, "full"
  # keeps only block inputs, "dots" keeps matmul outputs and recomputes the cheap elementwise
  # work between them. Trades FLOPs for memory; forward values are identical.
  m.remat = "none"
  # "dot": softmax attention; "sd": S-D attention (arXiv 2605.18826), scores through S - D with
  # S skew-symmetric and D a non-negative diagonal. The "sd" model of `models` sets it.
  m.attention = "dot"
  # Kernel for softmax attention in training and evaluation: "cudnn" is cuDNN flash attention
  # (NVIDIA GPUs, bf16), "xla" XLA's unfused path (any platform; it materialises the T x T
  # scores), "auto" cuDNN where it can run and XLA elsewhere; the run's log says which.
  # Analyses that read the attention pattern always use the explicit softmax.
  m.attention_impl = "auto"
  m.norm = "rms"  # "rms": RMSNorm pre-norm; "none": no norms at all (S-D claims to train so)

  # Directional routing (METHOD.md §1). `routing=False` is the baseline: same module, no router.
  m.routing = True
  m.num_directions = 4  # K
  m.router_hidden = 512
  m.router_depth = 3  # hidden layers: D -> 512 -> 512 -> 512 -> H*K
  m.router_activation = "gelu"  # [reconstructed]
  m.router_temperature = 5.0
  # "sequence_mean" is the paper's router: it pools the whole sequence and so sees the future
  # (non-causal). "causal_mean" pools the prefix up to and including each position.
  m.pooling = "causal_mean"
  m.router_input = "normed"  # [reconstructed] pool the RMS-normalised input that attention sees
  return m


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = default_model_config()

  # The set of models trained side by side on the same batches, comma-separated:
  # "routed" is `model` with routing on, "baseline" the same config with routing off, "sd" the
  # baseline with S-D attention (add it: --config.models=routed,baseline,sd), "matched" the
  # baseline with a wider MLP, as many parameters as the routed model (model/variants.py).
  c.models = "routed,baseline"

  c.seed = 42
  c.steps = 1000
  c.batch_size = 32  # global, in sequences
  c.grad_accum_steps = 1  # micro-batches per step (batch_size is split into this many)
  c.seq_len = 256
  c.log_every = 10
  c.eval_every = 200
  c.eval_batches = 0  # 0: the whole held-out split
  # At each eval, every model's greedy continuation of these prompts goes to TensorBoard
  # (text tab `samples/<model>`); () turns it off. Skipped for synthetic data and multi-host.
  c.eval_samples = ("def ", "The ")
  c.eval_sample_tokens = 32
  c.checkpoint_every = 200
  # Also save when this many seconds have passed since the last save (0: off): bounds the work
  # a crash can lose whatever the step time. Several processes agree on it at log steps.
  c.checkpoint_every_secs = 0.0
  # "START:STOP" traces steps START..STOP-1 with jax.profiler into WORKDIR/profile (TensorBoard's
  # profile tab, XProf, Perfetto); "" is off. Start after the first steps (compile, warm-up).
  c.profile_steps = ""

  c.optim = ml_collections.ConfigDict()
  c.optim.peak_lr = 3e-4
  c.optim.final_lr = 3e-5
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.1
  c.optim.b1 = 0.9
  c.optim.b2 = 0.95
  c.optim.eps = 1e-8
  c.optim.grad_clip = 1.0
  c.optim.routing_lr_scale = 0.5  # routers + directions train at 0.5x the base LR (paper)

  c.data = ml_collections.ConfigDict()
  c.data.source = "embedded"  # embedded | tfds | files | synthetic
  c.data.tokenizer = "bpe"  # gpt2 | bpe | bytes
  c.data.bpe_vocab_size = 4096
  c.data.tfds_name = ""
  c.data.tfds_data_dir = ""
  c.data.tfds_text_key = "text"
  # Comma-separated globs of .txt / .jsonl / .parquet; `domain=glob` labels an entry's files
  # with a domain (e.g. "code=/d/py/*.jsonl,prose=/d/books/*.txt"); so does `domain=name` in
  # tfds_name (one domain per dataset). Unlabelled data is a single domain.
  c.data.files = ""
  c.data.text_key = "text"
  c.data.domain_key = ""  # files: a .jsonl field / .parquet column naming each row's domain
  c.data.cache_dir = ""  # default: ~/.cache/dirroute_jax
  c.data.eval_fraction = 0.05
  c.data.worker_count = 0  # grain reader threads; 0 = default (4)
  c.data.max_bytes_per_domain = 6_000_000  # embedded corpus: cap per domain
  c.data.max_docs = 0  # tfds / files: documents read per split, 0 = all
  c.data.synthetic_tokens = 1 << 20  # size of the synthetic train stream

  # Device mesh sizes (one may be -1: all remaining devices); they alone decide what is
  # sharded (train/sharding.py): the batch over data x fsdp, parameters and optimizer state
  # along d_model over fsdp, heads / MLP width / vocabulary over tensor.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  # Slices joined over the data-center network (TPU multi-slice): the outer level of the mesh,
  # data parallel only. 0: the number of slices the devices span (1 on one slice or GPU node).
  c.mesh.dcn_data = 0
  # Removed: a preset chose the rules apart from the sizes. Kept so that passing it gets an
  # explanation and configs saved by older runs still load; validate_mesh_config rejects it.
  c.mesh.preset = ml_collections.config_dict.placeholder(str)

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 3
  c.checkpoint.permanent_every = 0  # 0: none kept permanently

  return c


class ConfigError(ValueError):
  """A configuration value is invalid; the message says which and how to fix it."""


def _need(ok: bool, msg: str) -> None:
  if not ok:
    raise ConfigError(msg)


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
  """`profile_steps` "START:STOP" -> (START, STOP), "" -> None; a ConfigError otherwise."""
  if not spec:
    return None
  m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(spec))
  _need(
    bool(m) and 1 <= int(m.group(1)) < int(m.group(2)),
    f"profile_steps={spec!r}: use START:STOP with 1 <= START < STOP (steps START..STOP-1 "
    "are traced), e.g. --config.profile_steps=10:13, or '' for no trace.",
  )
  return int(m.group(1)), int(m.group(2))


def validate_config(c: ml_collections.ConfigDict) -> None:
  """Checks a whole experiment config; every message names the key and a valid value."""
  validate_model_config(c.model)
  validate_mesh_config(c.mesh)
  for key in ("steps", "batch_size", "seq_len", "grad_accum_steps", "log_every"):
    _need(int(c[key]) >= 1, f"{key} must be a positive integer, got {c[key]!r}.")
  for key in ("eval_every", "checkpoint_every", "checkpoint_every_secs"):
    _need(c[key] >= 0, f"{key} must be >= 0 (0 disables it), got {c[key]!r}.")
  parse_profile_steps(c.get("profile_steps", ""))
  _need(
    int(c.eval_batches) >= 0,
    f"eval_batches must be >= 0 (0: the whole held-out split), got {c.eval_batches!r}.",
  )
  _need(
    c.batch_size % c.grad_accum_steps == 0,
    f"batch_size={c.batch_size} must be divisible by grad_accum_steps={c.grad_accum_steps}.",
  )
  _need(
    c.optim.peak_lr > 0 and c.optim.final_lr >= 0,
    "optim.peak_lr must be > 0 and optim.final_lr >= 0.",
  )
  _need(c.optim.routing_lr_scale >= 0, "optim.routing_lr_scale must be >= 0.")
  _need(
    c.data.source in ("embedded", "tfds", "files", "synthetic"),
    f"data.source={c.data.source!r} is unknown; use embedded, tfds, files or synthetic.",
  )
  _need(
    c.data.source != "files" or bool(c.data.files),
    "data.source='files' needs data.files, a glob of .txt/.jsonl/.parquet files, e.g. "
    "--config.data.files='/data/fineweb/sample/10BT/*.parquet' (or use "
    "--config.data.source=embedded to train on the embedded corpus).",
  )
  _need(
    c.data.source != "tfds" or bool(c.data.tfds_name),
    "data.source='tfds' needs data.tfds_name (and data.tfds_data_dir with prepared files).",
  )


def validate_mesh_config(mesh: ml_collections.ConfigDict) -> None:
  _need(
    mesh.get("preset") is None,
    f"mesh.preset={mesh.preset!r} was removed: the mesh sizes alone decide what is sharded "
    "now. Drop it and set sizes instead: dp is mesh.data=-1, fsdp is mesh.data=1 "
    "mesh.fsdp=-1, fsdp_tp is e.g. mesh.data=1 mesh.fsdp=2 mesh.tensor=-1.",
  )


def validate_model_config(m: ml_collections.ConfigDict) -> None:
  need = _need

  for key in (
    "vocab_size",
    "d_model",
    "num_layers",
    "num_heads",
    "head_dim",
    "d_ff",
    "vocab_pad_multiple",
  ):
    need(int(m[key]) >= 1, f"model.{key} must be a positive integer, got {m[key]!r}.")
  need(m.pooling in POOLINGS, f"model.pooling={m.pooling!r} is unknown; use one of {POOLINGS}.")
  need(
    m.router_input in ROUTER_INPUTS,
    f"model.router_input={m.router_input!r} is unknown; use one of {ROUTER_INPUTS}.",
  )
  need(
    m.router_activation in ROUTER_ACTIVATIONS,
    f"model.router_activation={m.router_activation!r} is unknown; use one of {ROUTER_ACTIVATIONS}.",
  )
  need(m.dtype in DTYPES, f"model.dtype={m.dtype!r} is unknown; use one of {DTYPES}.")
  need(
    m.attention in ATTENTIONS,
    f"model.attention={m.attention!r} is unknown; use one of {ATTENTIONS}.",
  )
  need(
    m.attention_impl in ATTENTION_IMPLS,
    f"model.attention_impl={m.attention_impl!r} is unknown; use one of {ATTENTION_IMPLS}.",
  )
  need(m.norm in NORMS, f"model.norm={m.norm!r} is unknown; use one of {NORMS}.")
  need(
    m.remat in REMAT_POLICIES, f"model.remat={m.remat!r} is unknown; use one of {REMAT_POLICIES}."
  )
  need(m.head_dim % 2 == 0, f"model.head_dim={m.head_dim} must be even for RoPE.")
  if m.routing:
    need(
      m.num_directions >= 1,
      f"model.num_directions={m.num_directions} must be >= 1 when model.routing=True.",
    )
    need(
      m.router_depth >= 0 and m.router_hidden >= 1,
      "model.router_depth must be >= 0 and model.router_hidden >= 1.",
    )
    need(m.router_temperature > 0, f"model.router_temperature={m.router_temperature} must be > 0.")


def flatten(d: dict, prefix: str = "") -> dict:
  """{"model": {"d_model": 64}} -> {"model.d_model": 64}: the form configs are compared in
  (resume checks) and merged back from (`ConfigDict.update_from_flattened_dict`)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """Loads `get_config()` from a `configs/*.py` file (as absl's config_flags does)."""
  import importlib.util
  import os

  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist; pass e.g. configs/tiny.py.")
  spec = importlib.util.spec_from_file_location(
    "_dirroute_config_" + os.path.basename(path)[:-3], path
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
