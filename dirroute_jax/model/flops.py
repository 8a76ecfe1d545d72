"""Model FLOPs per token, with the convention written down (train/flops.py turns them into MFU;
model/variants.py matches a baseline's compute to the routed model's with them).

Convention (PaLM, Chowdhery et al. 2022, appendix B), training FLOPs per token:

    6 * N_matmul  +  12 * L * H * Dh * T  (+ routing terms below)

- N_matmul: parameters that take part in a matmul per token: Q, K, V, O (S-D attention: one
  shared Q/K projection plus the H x Dh x Dh operator), the SwiGLU MLP and the tied
  unembedding (V x D; the embedding lookup itself is free). Norm scales excluded.
- Attention scores and the weighted sum of values count in full: causal masking is NOT
  halved (what most MFU tables do; halving would lower MFU by ~T/(2*(6N/12LHDh+T))).
- Routing: the router MLP runs once per token for "causal_mean" and once per sequence for
  "sequence_mean" (so /T per token); the suppression is 4*H*K*Dh multiply-adds forward.
- Backward = 2 x forward; rematerialisation is not counted (this is model FLOPs, not
  hardware FLOPs).
"""

from __future__ import annotations

from dirroute_jax.model.transformer import padded_vocab_size


def router_params(m) -> int:
  if not m.routing:
    return 0
  widths = [m.d_model] + [m.router_hidden] * m.router_depth + [m.num_heads * m.num_directions]
  return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def flops_per_token(m, seq_len: int) -> float:
  """Training (forward + backward) model FLOPs per token for one model config `m`."""
  attn_proj = 4 * m.d_model * m.num_heads * m.head_dim
  if m.attention == "sd":  # one shared q/k projection, then the Dh x Dh operator on queries
    attn_proj += (m.num_heads * m.head_dim * m.head_dim) - m.d_model * m.num_heads * m.head_dim
  mlp = 3 * m.d_model * m.d_ff
  n_matmul = m.num_layers * (attn_proj + mlp) + padded_vocab_size(m) * m.d_model
  flops = 6 * n_matmul + 12 * m.num_layers * m.num_heads * m.head_dim * seq_len
  if m.routing:
    per_token_router = router_params(m) / (seq_len if m.pooling == "sequence_mean" else 1)
    suppression = 4 * m.num_heads * m.num_directions * m.head_dim
    flops += 6 * m.num_layers * per_token_router + 3 * m.num_layers * suppression
  return float(flops)
