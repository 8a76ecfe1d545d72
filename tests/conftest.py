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
  if jax.default_backend() == "cpu":
    skip = pytest.mark.skip(reason="needs an accelerator (GPU/TPU); this machine is CPU-only")
    for item in items:
      if "accelerator" in item.keywords:
        item.add_marker(skip)


@pytest.fixture
def tiny_cfg():
  """A fresh copy of configs/tiny.py per test (tests mutate it)."""
  return copy.deepcopy(load_config_file(os.path.join(REPO, "configs", "tiny.py")))
