"""The fast paths equal the plain math: the causal router with its first layer before the
prefix mean, the suppression in bf16, and the attention kernel choice (cuDNN on GPU)."""

import types

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dirroute_jax.config import ConfigError
from dirroute_jax.model import routing
from dirroute_jax.model.kernels import resolve_attention_impl
from dirroute_jax.model.transformer import build_model, forward, init_params


def _reference_router(params, x_BxTxD, pooling, depth, temperature, act=nn.gelu):
  """Eq. (2) as the paper writes it: pool first, then the MLP, all in float32."""
  h = routing.pool(x_BxTxD, pooling)
  for i in range(depth):
    layer = params[f"hidden_{i}"]
    h = act(h @ layer["kernel"] + layer["bias"])
  z = h @ params["out"]["kernel"] + params["out"]["bias"]
  return jax.nn.sigmoid(temperature * z.reshape(z.shape[:-1] + (3, 2)))


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["causal_mean", "sequence_mean"])
@pytest.mark.parametrize("depth,hidden", [(0, 16), (2, 16), (2, 48)])  # 48 > D: pools first
def test_router_equals_pool_then_mlp(pooling, depth, hidden):
  x_BxTxD = jax.random.normal(jax.random.key(0), (2, 9, 24)) * 3.0 + 1.0
  router = routing.Router(
    num_heads=3, num_directions=2, hidden=hidden, depth=depth, temperature=5.0, pooling=pooling
  )
  params = nn.meta.unbox(router.init(jax.random.key(1), x_BxTxD)["params"])
  got = router.apply({"params": params}, x_BxTxD)
  want = _reference_router(params, x_BxTxD, pooling, depth, 5.0)
  assert got.shape == (2, 9 if pooling == "causal_mean" else 1, 3, 2)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def _float32_arrays_of_shape(fn, shape, *args):
  """Equations in fn's jaxpr (forward and backward) that produce a float32 array of `shape`."""
  jaxpr = jax.make_jaxpr(fn)(*args)
  found = []

  def walk(jx):
    for eqn in jx.eqns:
      found.extend(
        str(eqn.primitive)
        for v in eqn.outvars
        if v.aval.shape == shape and v.aval.dtype == jnp.float32
      )
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)

  walk(jaxpr.jaxpr)
  return found


@pytest.mark.slow
def test_bf16_causal_router_makes_no_float32_copy_of_its_input():
  B, T, D = 2, 8, 40  # D differs from hidden (16) so the two widths are told apart
  x = jax.random.normal(jax.random.key(0), (B, T, D)).astype(jnp.bfloat16)
  router = routing.Router(
    num_heads=2, num_directions=2, hidden=16, depth=2, pooling="causal_mean", dtype=jnp.bfloat16
  )
  params = nn.meta.unbox(router.init(jax.random.key(1), x)["params"])
  loss = lambda p, x: router.apply({"params": p}, x).sum()
  assert _float32_arrays_of_shape(jax.grad(loss, argnums=(0, 1)), (B, T, D), params, x) == []
  # The prefix mean itself still accumulates in float32, over the hidden width only.
  assert _float32_arrays_of_shape(loss, (B, T, 16), params, x)


@pytest.mark.slow
def test_bf16_suppression_stays_bf16_and_tracks_float32():
  rng = np.random.default_rng(0)
  B, T, H, K, Dh = 2, 6, 3, 4, 16
  o = jnp.asarray(rng.normal(size=(B, T, H, Dh)), jnp.float32)
  r = jnp.asarray(rng.uniform(size=(B, T, H, K)), jnp.float32)
  d = jnp.asarray(rng.normal(size=(H, K, Dh)), jnp.float32)
  o16 = o.astype(jnp.bfloat16)

  def forward_and_backward(o, r, d):  # a bf16 cotangent, as the model's backward pass sends
    out, vjp = jax.vjp(routing.suppress, o, r, d)
    return vjp(jnp.ones_like(out))

  assert _float32_arrays_of_shape(forward_and_backward, (B, T, H, Dh), o16, r, d) == []
  got = routing.suppress(o16, r, d)
  assert got.dtype == jnp.bfloat16
  want = routing.suppress(o16.astype(jnp.float32), r, d)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=5e-2)


def _fake_device(
  platform="gpu", kind="NVIDIA H100 80GB HBM3", capability="9.0", version="cuda 12080"
):
  return types.SimpleNamespace(
    platform=platform,
    device_kind=kind,
    compute_capability=capability,
    client=types.SimpleNamespace(platform_version=version),
  )


@pytest.mark.parametrize(
  "device,dtype,head_dim,impl,why",
  [
    (_fake_device(), "bfloat16", 128, "cudnn", "H100"),
    (_fake_device(), "bfloat16", 256, "cudnn", "H100"),  # Hopper allows up to 256
    (_fake_device(kind="NVIDIA A100", capability="8.0"), "bfloat16", 256, "xla", "<= 128"),
    (_fake_device(), "float32", 128, "xla", "bf16"),
    (_fake_device(), "bfloat16", 12, "xla", "multiple of 8"),
    (_fake_device(kind="Tesla V100", capability="7.0"), "bfloat16", 64, "xla", "8.0"),
    (_fake_device(version="rocm 6.0"), "bfloat16", 64, "xla", "NVIDIA"),
    (_fake_device("tpu", "TPU v5 lite", None, "tpu"), "bfloat16", 128, "splash", "TPU v5 lite"),
    # A compile-only CUDA device (launch/plan.py --target) names no "cuda" version: its kind does.
    (_fake_device(version="PJRT C API"), "bfloat16", 128, "cudnn", "H100"),
  ],
)
def test_auto_picks_cudnn_only_where_it_runs(device, dtype, head_dim, impl, why):
  got, reason = resolve_attention_impl("auto", dtype, head_dim, device)
  assert got == impl and why in reason
  assert resolve_attention_impl("xla", dtype, head_dim, device)[0] == "xla"
  if impl != "cudnn":
    with pytest.raises(ConfigError, match="attention_impl='cudnn' cannot run here"):
      resolve_attention_impl("cudnn", dtype, head_dim, device)


def _loss_and_grads(model, params, tokens, capture=()):
  def loss(p):
    logits, _ = forward(model, p, tokens[:, :-1], capture=capture)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

  return jax.value_and_grad(loss)(params)


@pytest.mark.slow
def test_auto_on_cpu_is_xla_and_equals_the_explicit_path(tiny_cfg):
  assert tiny_cfg.model.attention_impl == "auto"
  model = build_model(tiny_cfg.model)
  params = init_params(model, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 17), 0, tiny_cfg.model.vocab_size)
  fused_loss, fused_grads = _loss_and_grads(model, params, tokens)
  # Capturing the pattern switches every layer to the explicit softmax.
  ref_loss, ref_grads = _loss_and_grads(model, params, tokens, ("blocks.*.attn.pattern",))
  np.testing.assert_allclose(float(fused_loss), float(ref_loss), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(fused_grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_cudnn_on_cpu_is_a_clear_error(tiny_cfg):
  tiny_cfg.model.attention_impl = "cudnn"
  tiny_cfg.model.dtype = "bfloat16"
  model = build_model(tiny_cfg.model)
  with pytest.raises(ConfigError, match="needs an NVIDIA GPU; the devices are cpu"):
    init_params(model, jax.random.key(0))


@pytest.mark.accelerator
def test_cudnn_equals_xla_on_gpu(tiny_cfg):
  """On an NVIDIA GPU: cuDNN flash attention's forward and gradients equal XLA's to bf16
  tolerance, for the kernel alone and for a whole bf16 model."""
  if resolve_attention_impl("auto", "bfloat16", 64)[0] != "cudnn":
    pytest.skip("no GPU here that cuDNN flash attention supports")
  B, T, H, Dh = 2, 256, 4, 64
  q, k, v = (
    jax.random.normal(key, (B, T, H, Dh), jnp.bfloat16)
    for key in jax.random.split(jax.random.key(0), 3)
  )
  ct = jax.random.normal(jax.random.key(1), (B, T, H, Dh), jnp.bfloat16)

  def attend(impl):
    def f(q, k, v):
      out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=impl)
      return jnp.sum(out.astype(jnp.float32) * ct.astype(jnp.float32)), out

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, k, v)

  (_, out_x), grads_x = attend("xla")
  (_, out_c), grads_c = attend("cudnn")
  as32 = lambda a: np.asarray(a, np.float32)
  np.testing.assert_allclose(as32(out_c), as32(out_x), atol=2e-2, rtol=2e-2)
  for gc, gx in zip(grads_c, grads_x):
    scale = float(np.abs(as32(gx)).max())
    np.testing.assert_allclose(as32(gc), as32(gx), atol=2e-2 * scale, rtol=2e-2)

  tiny_cfg.model.dtype = "bfloat16"
  tiny_cfg.model.head_dim = 64
  losses, grads = {}, {}
  for impl in ("xla", "cudnn"):
    tiny_cfg.model.attention_impl = impl
    model = build_model(tiny_cfg.model)
    params = init_params(model, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(2), (2, 129), 0, tiny_cfg.model.vocab_size)
    losses[impl], grads[impl] = _loss_and_grads(model, params, tokens)
  np.testing.assert_allclose(float(losses["cudnn"]), float(losses["xla"]), rtol=1e-2)
  for gc, gx in zip(jax.tree.leaves(grads["cudnn"]), jax.tree.leaves(grads["xla"])):
    scale = float(np.abs(np.asarray(gx)).max()) + 1e-12
    assert float(np.abs(np.asarray(gc) - np.asarray(gx)).max()) <= 5e-2 * scale
