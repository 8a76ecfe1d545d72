"""Seeds size: configs/tiny.py's architecture trained 1000 steps (2.05M tokens per model, the
token count of the single-seed small reproduction), with the parameter-matched baseline.

Sized for launch/seeds.py: 5 seeds x 2 poolings = 10 runs of three models each (routed,
baseline, matched; one jitted step) within about 45 minutes on 2 CPU cores (one step of the
three: 140 ms on an idle 2-core machine; the estimate is in REPRODUCTION.md). Held-out
perplexity is evaluated on the whole held-out split every 100 steps (10 points per curve).
"""

import os

from dirroute_jax import config as base

_TINY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny.py")


def get_config():
  c = base.load_config_file(_TINY)
  c.models = "routed,baseline,matched"
  c.steps = 1000
  c.optim.warmup_steps = 50
  c.log_every = 50
  c.eval_every = 100
  c.eval_batches = 0  # 0: the whole held-out split
  c.checkpoint_every = 500
  c.eval_samples = ()  # no TensorBoard text samples: they cost a compile per run
  return c
