"""Test setup: 8 fake CPU devices for sharding tests, set before jax is imported anywhere."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import copy  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

from dirroute_jax.config import load_config_file  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
  # A test on the trained workdir is end to end: it waits for `trained_workdir` to train.
  for item in items:
    if "trained_workdir" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.slow)
  if jax.default_backend() == "cpu":
    skip = pytest.mark.skip(reason="needs an accelerator (GPU/TPU); this machine is CPU-only")
    for item in items:
      if "accelerator" in item.keywords:
        item.add_marker(skip)


@pytest.fixture
def tiny_cfg():
  """A fresh copy of configs/tiny.py per test (tests mutate it)."""
  return copy.deepcopy(load_config_file(os.path.join(REPO, "configs", "tiny.py")))


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory):
  """A tiny routed/baseline pair trained for 80 steps on the embedded corpus (bytes tokenizer),
  shared by every analysis test. Returns the workdir path."""
  from dirroute_jax.train.loop import train

  cfg = copy.deepcopy(load_config_file(os.path.join(REPO, "configs", "tiny.py")))
  root = tmp_path_factory.mktemp("trained")
  cfg.data.cache_dir = str(root / "cache")
  cfg.data.tokenizer = "bytes"
  cfg.model.vocab_size = 257
  cfg.steps, cfg.batch_size, cfg.seq_len = 80, 8, 64
  cfg.log_every, cfg.eval_every, cfg.checkpoint_every, cfg.eval_batches = 40, 0, 80, 2
  workdir = str(root / "workdir")
  train(cfg, workdir, log=lambda *a, **k: None)
  return workdir
