"""Tiny pair: trains in a few minutes on 2 CPU cores. Used by the README Quickstart and tests."""

from dirroute_jax import config as base


def get_config():
  c = base.default_config()
  m = c.model
  m.vocab_size = 2048
  m.d_model = 64
  m.num_layers = 2
  m.num_heads = 4
  m.head_dim = 16
  m.d_ff = 176
  m.num_directions = 4
  m.router_hidden = 64

  c.data.source = "embedded"
  c.data.tokenizer = "bpe"
  c.data.bpe_vocab_size = 2048

  c.steps = 300
  c.batch_size = 16
  c.seq_len = 128
  c.optim.peak_lr = 3e-3
  c.optim.final_lr = 3e-4
  c.optim.warmup_steps = 30
  c.log_every = 25
  c.eval_every = 100
  c.checkpoint_every = 100
  return c
