"""dirroute_jax: a directionally routed transformer and its identical baseline, trained side by
side in one jitted step, and the analyses that look inside them.

Shape suffixes. An array's name ends in its axes, in order, joined by `x`: `x_BxTxD` is
batch x positions x d_model. These letters mean the same in every module:

  B   batch (sequences)
  T   positions in a sequence
  S   the router's pooled positions: 1 for "sequence_mean" pooling, T for "causal_mean"
  D   d_model (the residual stream)
  H   attention heads
  Dh  head_dim
  K   routing directions per head
  L   layers
  V   vocabulary
  F   MLP width (model.d_ff)
  C   KV-cache capacity (incremental decoding)
  P   prompt length (sampling)
  N   rows: examples gathered across sequences, positions or heads

A digit is a literal size (`rows_Nx3`, an axis of size 1 kept for broadcasting: `_BxTx1`);
`T1` is T + 1 (a window: inputs plus the next-token target), `2Dh` is 2 x Dh. A few sizes
exist in one analysis only; their letters are local to that module (where C, F and P do not
mean the above):

  analysis/regimes.py    C classes (regimes), F features, G feature groups, P permutations
  analysis/induction.py  P the pool tokens are drawn from, W the repeated document's length,
                         Q the query positions scored
  analysis/steering.py   M token sets
  analysis/directions.py R random vectors per head
  analysis/spectral.py   P rotation planes (pairs of singular values)
"""
