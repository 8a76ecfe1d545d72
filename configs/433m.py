"""The paper's 433M routed model and its 417M baseline (arXiv 2603.14923; METHOD.md §1).

Architecture: 12 layers, d_model 1536, 12 heads x 128, SwiGLU d_ff 4096, GPT-2 BPE vocab 50257
(padded to a multiple of 128 for speed; padded logits are masked), context 1024, K = 4, router
1536-512-512-512-48, tied embeddings.

Recipe: FineWeb sample-10BT, AdamW with cosine 3e-4 -> 3e-5, 500 warmup steps, weight decay 0.1,
bf16 compute, micro-batch 16 x accumulation 8 x 1024 tokens (global batch 128 sequences),
20K steps, seed 42.

Pods: as shipped (mesh fsdp over all devices, micro-batch 16) the pair fits v4-8, v5e-16, v5p-8,
v6e-8, 1 x H100 and 8 x H100 (fsdp, data parallel, fsdp 4 x tensor 2) with at least 20% of HBM
to spare, by each target compiler's own memory analysis (`python launch/plan.py
--config=configs/433m.py --target=v5e-16`; the table is in BENCHMARKS.md). Two slices: the
same command with --target=2xv5e-16 (mesh.dcn_data splits the batch over the slices).

Pooling is the paper's `sequence_mean`, which is NOT causal: every position's routing sees the
whole sequence, future included. Use `--config.model.pooling=causal_mean` for a model whose
perplexity is comparable with a causal LM.
"""

from dirroute_jax import config as base


def get_config():
  c = base.default_config()
  m = c.model
  m.vocab_size = 50257
  m.vocab_pad_multiple = 128
  m.d_model = 1536
  m.num_layers = 12
  m.num_heads = 12
  m.head_dim = 128
  m.d_ff = 4096
  m.num_directions = 4
  m.router_hidden = 512
  m.router_depth = 3
  m.pooling = "sequence_mean"
  m.dtype = "bfloat16"

  c.data.source = "files"  # point --config.data.files at FineWeb sample-10BT parquet shards
  c.data.files = ""
  c.data.text_key = "text"
  c.data.tokenizer = "gpt2"

  c.seed = 42
  c.steps = 20_000
  c.batch_size = 128
  c.grad_accum_steps = 8
  c.seq_len = 1024
  c.optim.peak_lr = 3e-4
  c.optim.final_lr = 3e-5
  c.optim.warmup_steps = 500
  c.optim.weight_decay = 0.1
  c.log_every = 50
  c.eval_every = 1000
  c.eval_batches = 32  # a fixed sample spread over the (large) held-out split; 0: all of it
  c.checkpoint_every = 1000
  c.checkpoint.permanent_every = 5000
  c.mesh.data = 1
  c.mesh.fsdp = -1
  return c
