"""Small pair: a CPU-trainable research size (~6M params per model with a 4K BPE vocab)."""

from dirroute_jax import config as base


def get_config():
  c = base.default_config()
  m = c.model
  m.vocab_size = 4096
  m.d_model = 256
  m.num_layers = 4
  m.num_heads = 4
  m.head_dim = 64
  m.d_ff = 688
  m.num_directions = 4
  m.router_hidden = 128

  c.data.source = "embedded"
  c.data.tokenizer = "bpe"
  c.data.bpe_vocab_size = 4096

  c.steps = 2000
  c.batch_size = 32
  c.seq_len = 256
  c.optim.peak_lr = 1e-3
  c.optim.final_lr = 1e-4
  c.optim.warmup_steps = 100
  c.log_every = 20
  c.eval_every = 250
  c.checkpoint_every = 250
  return c
