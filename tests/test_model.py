"""The model: suppression equation, routing off == baseline, interventions, masks, RoPE."""

import copy

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dirroute_jax.config import ConfigError
from dirroute_jax.model import interventions as iv
from dirroute_jax.model import routing
from dirroute_jax.model.attention import causal_attention_with_pattern, rope
from dirroute_jax.model.transformer import build_model, forward, init_params


def _pair(model_cfg):
  routed_cfg, base_cfg = copy.deepcopy(model_cfg), copy.deepcopy(model_cfg)
  routed_cfg.routing, base_cfg.routing = True, False
  return build_model(routed_cfg), build_model(base_cfg)


def _tokens(cfg, B=2, T=24, seed=1):
  return jax.random.randint(jax.random.key(seed), (B, T), 0, cfg.vocab_size)


def test_suppression_matches_numpy():
  rng = np.random.default_rng(0)
  B, T, H, K, Dh = 2, 5, 3, 4, 8
  o = rng.normal(size=(B, T, H, Dh)).astype(np.float32)
  r = rng.uniform(size=(B, T, H, K)).astype(np.float32)
  d = rng.normal(size=(H, K, Dh)).astype(np.float32) * 3.0  # not unit norm on purpose
  expected = o.copy()
  for b in range(B):
    for t in range(T):
      for h in range(H):
        for k in range(K):
          dk = d[h, k] / np.linalg.norm(d[h, k])
          expected[b, t, h] -= r[b, t, h, k] * np.dot(o[b, t, h], dk) * dk
  got = routing.suppress(jnp.asarray(o), jnp.asarray(r), jnp.asarray(d))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
  # One weight per sequence (sequence_mean) broadcasts over T.
  got_seq = routing.suppress(jnp.asarray(o), jnp.asarray(r[:, :1]), jnp.asarray(d))
  np.testing.assert_allclose(
    np.asarray(got_seq),
    np.asarray(
      routing.suppress(jnp.asarray(o), jnp.broadcast_to(r[:, :1], r.shape), jnp.asarray(d))
    ),
    rtol=1e-6,
  )


def test_causal_mean_pool_is_prefix_mean():
  x = np.random.default_rng(0).normal(size=(2, 7, 3)).astype(np.float32)
  got = np.asarray(routing.pool(jnp.asarray(x), "causal_mean"))
  for t in range(7):
    np.testing.assert_allclose(got[:, t], x[:, : t + 1].mean(axis=1), rtol=1e-5, atol=1e-6)
  seq = np.asarray(routing.pool(jnp.asarray(x), "sequence_mean"))
  assert seq.shape == (2, 1, 3)
  np.testing.assert_allclose(seq[:, 0], x.mean(axis=1), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["causal_mean", "sequence_mean"])
def test_routing_off_equals_baseline_with_shared_weights(tiny_cfg, pooling):
  tiny_cfg.model.pooling = pooling
  routed, baseline = _pair(tiny_cfg.model)
  p_routed = init_params(routed, jax.random.key(0))
  # The baseline's params are exactly the routed model's minus routers and directions.
  flat = flax.traverse_util.flatten_dict(p_routed)
  p_base = flax.traverse_util.unflatten_dict(
    {k: v for k, v in flat.items() if "router" not in k and k[-1] != "directions"}
  )
  assert jax.tree.structure(p_base) == jax.tree.structure(init_params(baseline, jax.random.key(0)))
  tokens = _tokens(tiny_cfg.model)
  base_logits, _ = forward(baseline, p_base, tokens)
  off_logits, _ = forward(routed, p_routed, tokens, interventions=iv.routing_off(tiny_cfg.model))
  on_logits, _ = forward(routed, p_routed, tokens)
  np.testing.assert_allclose(np.asarray(off_logits), np.asarray(base_logits), atol=1e-6)
  assert float(jnp.abs(on_logits - base_logits).max()) > 1e-3  # routing does something


@pytest.mark.slow
def test_k1_r1_removes_the_direction(tiny_cfg):
  tiny_cfg.model.num_directions = 1
  model, _ = _pair(tiny_cfg.model)
  params = init_params(model, jax.random.key(0))
  _, caps = forward(
    model,
    params,
    _tokens(tiny_cfg.model),
    interventions=iv.routing_fixed(tiny_cfg.model, 1.0),
    capture=("blocks.*.attn.z", "blocks.*.attn.z_routed"),
  )
  for l in range(tiny_cfg.model.num_layers):
    d_HxKxDh = routing.unit_directions(params[f"blocks_{l}"]["attn"]["directions"])
    z = caps[f"blocks.{l}.attn.z"]
    z_routed = caps[f"blocks.{l}.attn.z_routed"]
    along_before = jnp.einsum("bthd,hd->bth", z, d_HxKxDh[:, 0])
    along_after = jnp.einsum("bthd,hd->bth", z_routed, d_HxKxDh[:, 0])
    assert float(jnp.abs(along_before).max()) > 1e-3
    assert float(jnp.abs(along_after).max()) < 1e-6


def test_routing_interventions_set_captured_weights(tiny_cfg):
  m = tiny_cfg.model
  model, _ = _pair(m)
  params = init_params(model, jax.random.key(0))
  tokens = _tokens(m)
  _, caps = forward(
    model, params, tokens, interventions=iv.routing_fixed(m, 0.5), capture=("blocks.*.attn.r",)
  )
  assert all(np.all(np.asarray(caps[f"blocks.{l}.attn.r"]) == 0.5) for l in range(m.num_layers))
  _, free = forward(model, params, tokens, capture=("blocks.*.attn.r",))
  _, forced = forward(
    model,
    params,
    tokens,
    interventions=iv.force_direction(m, 1, 2, 3, 1.0),
    capture=("blocks.*.attn.r",),
  )
  r_free, r_forced = np.asarray(free["blocks.1.attn.r"]), np.asarray(forced["blocks.1.attn.r"])
  assert np.all(r_forced[:, :, 2, 3] == 1.0)
  keep = np.ones(r_free.shape, bool)
  keep[:, :, 2, 3] = False
  np.testing.assert_array_equal(r_forced[keep], r_free[keep])
  np.testing.assert_array_equal(
    np.asarray(forced["blocks.0.attn.r"]), np.asarray(free["blocks.0.attn.r"])
  )
  # Single-layer knockout touches only that layer.
  _, ko = forward(
    model, params, tokens, interventions=iv.routing_off(m, layers=[0]), capture=("blocks.*.attn.r",)
  )
  assert np.all(np.asarray(ko["blocks.0.attn.r"]) == 0.0)
  # Layer 1's router sees layer 0's changed output, so only its existence is checked.
  assert np.asarray(ko["blocks.1.attn.r"]).max() > 0.0


@pytest.mark.parametrize("mean", [False, True])
def test_head_knockout_changes_only_that_head(tiny_cfg, mean):
  m = tiny_cfg.model
  model, _ = _pair(m)
  params = init_params(model, jax.random.key(0))
  tokens = _tokens(m)
  names = ("blocks.*.attn.z_routed",)
  _, clean = forward(model, params, tokens, capture=names)
  mean_LxHxDh = None
  if mean:
    mean_LxHxDh = jnp.stack(
      [clean[f"blocks.{l}.attn.z_routed"].mean(axis=(0, 1)) for l in range(m.num_layers)]
    )
  _, ko = forward(
    model, params, tokens, capture=names, interventions=iv.knockout_heads(m, [(1, 2)], mean_LxHxDh)
  )
  z_clean, z_ko = (
    np.asarray(clean["blocks.1.attn.z_routed"]),
    np.asarray(ko["blocks.1.attn.z_routed"]),
  )
  expected = 0.0 if mean_LxHxDh is None else np.asarray(mean_LxHxDh[1, 2])
  np.testing.assert_allclose(
    z_ko[:, :, 2], np.broadcast_to(expected, z_ko[:, :, 2].shape), atol=1e-7
  )
  others = [h for h in range(m.num_heads) if h != 2]
  np.testing.assert_array_equal(z_ko[:, :, others], z_clean[:, :, others])
  np.testing.assert_array_equal(
    np.asarray(ko["blocks.0.attn.z_routed"]), np.asarray(clean["blocks.0.attn.z_routed"])
  )


@pytest.mark.slow
@pytest.mark.parametrize("routing_on", [True, False])
def test_causal_mask_and_pattern(tiny_cfg, routing_on):
  tiny_cfg.model.routing = routing_on
  model = build_model(tiny_cfg.model)
  params = init_params(model, jax.random.key(0))
  tokens = _tokens(tiny_cfg.model, T=16)
  logits, caps = forward(model, params, tokens, capture=("blocks.*.attn.pattern",))
  pattern = np.asarray(caps["blocks.0.attn.pattern"])
  assert np.all(np.triu(np.ones((16, 16)), k=1)[None, None] * pattern == 0.0)
  np.testing.assert_allclose(pattern.sum(-1), 1.0, rtol=1e-5)
  # The explicit-pattern path and the fused path give the same logits.
  fused, _ = forward(model, params, tokens)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(fused), atol=1e-5)
  # Changing the last token leaves every earlier position's logits untouched (causal pooling).
  changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % tiny_cfg.model.vocab_size)
  new, _ = forward(model, params, changed)
  np.testing.assert_array_equal(np.asarray(new[:, :-1]), np.asarray(fused[:, :-1]))


def test_attention_matches_reference_softmax():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(1, 6, 2, 4)), jnp.float32) for _ in range(3))
  o, pattern = causal_attention_with_pattern(q, k, v)
  s = np.einsum("qhd,khd->hqk", np.asarray(q[0]), np.asarray(k[0])) / 2.0
  s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(pattern[0]), p, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
    np.asarray(o[0]), np.einsum("hqk,khd->qhd", p, np.asarray(v[0])), rtol=1e-5, atol=1e-6
  )


def test_rope_scores_depend_only_on_relative_position():
  rng = np.random.default_rng(0)
  Dh, T = 16, 12
  q_vec, k_vec = rng.normal(size=Dh), rng.normal(size=Dh)
  same = lambda vec: jnp.asarray(np.tile(vec, (1, T, 1, 1)).reshape(1, T, 1, Dh), jnp.float32)
  q, k = rope(same(q_vec), 10_000.0)[0, :, 0], rope(same(k_vec), 10_000.0)[0, :, 0]
  scores = np.asarray(q @ k.T)
  for offset in range(-3, 4):
    diag = np.diagonal(scores, offset=offset)
    np.testing.assert_allclose(diag, diag[0], rtol=1e-4, atol=1e-4)
  assert abs(scores[5, 5] - scores[5, 2]) > 1e-3  # and it does depend on the offset
  # Norms are preserved: RoPE is a rotation.
  np.testing.assert_allclose(
    np.linalg.norm(np.asarray(q), axis=-1), np.linalg.norm(q_vec), rtol=1e-5
  )


def test_padded_vocab_is_masked(tiny_cfg):
  tiny_cfg.model.vocab_size = 2000
  tiny_cfg.model.vocab_pad_multiple = 128
  model = build_model(tiny_cfg.model)
  params = init_params(model, jax.random.key(0))
  assert params["embed"]["embedding"].shape[0] == 2048
  logits, _ = forward(model, params, _tokens(tiny_cfg.model))
  probs = jax.nn.softmax(logits, axis=-1)
  assert float(probs[..., 2000:].max()) == 0.0
  np.testing.assert_allclose(np.asarray(probs[..., :2000].sum(-1)), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_bfloat16_compute_tracks_float32(tiny_cfg):
  model32 = build_model(tiny_cfg.model)
  tiny_cfg.model.dtype = "bfloat16"
  model16 = build_model(tiny_cfg.model)
  params = init_params(model32, jax.random.key(0))
  for leaf in jax.tree.leaves(init_params(model16, jax.random.key(0))):
    assert leaf.dtype == jnp.float32  # master weights stay float32
  tokens = _tokens(tiny_cfg.model)
  l32, _ = forward(model32, params, tokens)
  l16, _ = forward(model16, params, tokens)
  assert l16.dtype == jnp.float32
  p32, p16 = jax.nn.softmax(l32), jax.nn.softmax(l16)
  assert float(jnp.abs(p32 - p16).max()) < 2e-2


@pytest.mark.parametrize(
  "key,value",
  [
    ("pooling", "mean"),
    ("router_activation", "swish"),
    ("head_dim", 15),
    ("num_directions", 0),
    ("dtype", "float16"),
    ("attention_impl", "flash"),
  ],
)
def test_bad_model_config_is_a_clear_error(tiny_cfg, key, value):
  tiny_cfg.model[key] = value
  with pytest.raises(ConfigError, match=f"model.{key}"):
    build_model(tiny_cfg.model)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_changes_nothing_but_memory(tiny_cfg, policy):
  import optax

  model = build_model(tiny_cfg.model)
  tiny_cfg.model.remat = policy
  remat_model = build_model(tiny_cfg.model)
  params = init_params(model, jax.random.key(0))
  tokens = _tokens(tiny_cfg.model)

  def loss(m, p):
    logits, _ = forward(m, p, tokens[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  g_ref = jax.grad(lambda p: loss(model, p))(params)
  g_remat = jax.grad(lambda p: loss(remat_model, p))(params)
  assert (
    max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), g_ref, g_remat)))
    < 1e-5
  )
  _, caps = forward(remat_model, params, tokens, capture=("blocks.1.attn.r",))
  assert caps["blocks.1.attn.r"].shape[-2:] == (4, 4)  # capture works through remat
