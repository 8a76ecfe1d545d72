"""Compiles the joint train step ahead of time on N fake CPU devices and prints its memory and
compute plan: does the run fit the accelerator before one is rented?

  python launch/plan.py --config=configs/433m.py --devices=4 --accelerator=v4     # v4-8
  python launch/plan.py --config=configs/433m.py --devices=16 --accelerator=v5e   # v5e-16
  python launch/plan.py --config=configs/433m.py --devices=8 --accelerator=h100 \
      --config.mesh.data=-1 --config.mesh.fsdp=1                                  # replicated

Nothing is allocated (abstract inputs); the XLA:CPU numbers approximate the accelerator's (see
dirroute_jax/train/plan.py). On the accelerator machine itself, --real_devices compiles for
its chips and gives their exact memory analysis. Any config key can be overridden
(--config.model.remat=full, --config.grad_accum_steps=16); the mesh sizes decide the sharding
(--config.mesh.data/fsdp/tensor, one may be -1; configs/433m.py shards parameters over fsdp).
"""

import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from dirroute_jax.cli import parse_flags
from dirroute_jax.config import ConfigError, validate_mesh_config, validate_model_config
from dirroute_jax.train import plan as plan_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file.", lock_config=True)
_DEVICES = flags.DEFINE_integer("devices", 8, "Chips (GPUs) to plan for: fake CPU devices.")
_REAL = flags.DEFINE_bool(
    "real_devices", False, "Compile for this machine's own accelerators (run on the TPU VM or "
    "GPU node: the accelerator's exact memory analysis) instead of fake CPU devices.")
_ACCELERATOR = flags.DEFINE_enum("accelerator", None, sorted(plan_lib.ACCELERATORS),
                                 "Check the estimated peak against this chip's HBM.")
flags.mark_flags_as_required(["config"])


def main(argv):
  del argv
  if not _REAL.value:  # before any backend exists: N CPU devices stand in for the N chips
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", _DEVICES.value)
  cfg = _CONFIG.value
  try:
    validate_model_config(cfg.model)  # the data side is not needed for a plan
    validate_mesh_config(cfg.mesh)
    if len(jax.devices()) < _DEVICES.value:
      raise ConfigError(f"--devices={_DEVICES.value} but only {len(jax.devices())} devices "
                        "exist (with fake CPU devices: is XLA_FLAGS setting "
                        "--xla_force_host_platform_device_count? unset it).")
    target = ("this machine's " + jax.devices()[0].platform.upper()) if _REAL.value else \
        "fake CPU"
    print(f"Compiling the joint train step ahead of time for {_DEVICES.value} {target} "
          "device(s), nothing allocated; no output until it is done. For 433m this has taken "
          "30-60 s on a 2-core CPU and about 6 minutes on a busy one...",
          file=sys.stderr, flush=True)
    plan = plan_lib.make_plan(cfg, jax.devices()[:_DEVICES.value])
  except ConfigError as e:
    sys.exit(f"error: {e}")
  print(plan_lib.format_plan(plan, _ACCELERATOR.value), end="")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
