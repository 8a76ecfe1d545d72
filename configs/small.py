"""Small pair: a CPU-trainable research size (4.2M params per model with a 4K BPE vocab).

The defaults train the pair on 2M tokens in about 20 minutes on 2 CPU cores (the budget of
launch/reproduce.py, which trains two such pairs); raise `steps` on faster hardware.
"""

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

  c.steps = 500
  c.batch_size = 16
  c.seq_len = 256
  c.optim.peak_lr = 2e-3
  c.optim.final_lr = 2e-4
  c.optim.warmup_steps = 60
  c.log_every = 20
  c.eval_every = 200
  c.checkpoint_every = 100
  return c
