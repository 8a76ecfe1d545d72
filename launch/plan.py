"""Compiles the joint train step ahead of time for a named pod with that pod's own compiler and
prints its memory and compute plan: does the run fit before one is rented?

  python launch/plan.py --config=configs/433m.py --target=v5e-16      # TPU compiler (libtpu)
  python launch/plan.py --config=configs/433m.py --target=8xh100      # XLA:GPU (CUDA plugin)
  python launch/plan.py --config=configs/433m.py --target=8xh100 \
      --config.mesh.data=-1 --config.mesh.fsdp=1                        # data parallel
  python launch/plan.py --list_targets

Nothing is allocated and no accelerator is needed: libtpu (`pip install -e '.[tpu]'`) and jax's
CUDA plugin (`pip install -e '.[cuda]'`) compile for compile-only devices on a CPU, and the
printed memory is that compiler's own analysis. Without the target's compiler the plan falls
back to fake CPU devices (XLA:CPU's numbers, an estimate) and says how to install it. On the
accelerator machine itself, --real_devices compiles for its own chips. `--devices=N
--accelerator=A` (fake CPU devices) still works. Any config key can be overridden
(--config.model.remat=full, --config.grad_accum_steps=16); the mesh sizes decide the sharding.
"""

import json
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from dirroute_jax.cli import parse_flags
from dirroute_jax.config import ConfigError, validate_mesh_config, validate_model_config
from dirroute_jax.train import plan as plan_lib
from dirroute_jax.train import targets as targets_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/*.py file.", lock_config=True)
_TARGET = flags.DEFINE_string(
  "target",
  None,
  "A pod to compile for with its own compiler: "
  + ", ".join(targets_lib.known_names())
  + " (--list_targets describes them).",
)
_LIST = flags.DEFINE_bool("list_targets", False, "List the known targets and exit.")
_JSON = flags.DEFINE_string(
  "json",
  None,
  "Also write the plan as JSON to this path (benchmarks/plan_targets.py collects them).",
)
_DEVICES = flags.DEFINE_integer(
  "devices", None, "Fake CPU devices standing in for N chips (without --target); default 8."
)
_REAL = flags.DEFINE_bool(
  "real_devices",
  False,
  "Compile for this machine's own accelerators (run on the TPU VM or "
  "GPU node) instead of fake CPU devices.",
)
_ACCELERATOR = flags.DEFINE_enum(
  "accelerator",
  None,
  sorted(plan_lib.ACCELERATORS),
  "With fake CPU devices: check the peak against this chip's "
  "HBM. Replaced by --target (the chip's own compiler).",
)


def _list_targets() -> str:
  rows = []
  for name in targets_lib.known_names():
    t = targets_lib.get(name)
    slices = f", {t.num_slices} slices" if t.num_slices > 1 else ""
    installed = (
      ""
      if targets_lib.compiler_installed(t.platform)
      else f"  [compiler not installed: {targets_lib.install_hint(t.platform)}]"
    )
    rows.append(
      f"{name:<10} {t.chips:>3} x {t.chip} ({t.hbm_bytes / targets_lib.GIB:.0f} GiB)"
      f"{slices}{installed}"
    )
  return "\n".join(rows) + "\n"


def _devices_and_target():
  """(devices, Target or None, fallback note or None), after choosing jax's platform."""
  if _REAL.value:
    if _TARGET.value:
      raise ConfigError("--real_devices compiles for this machine's chips; drop --target.")
    devices = jax.devices()
    return devices[: _DEVICES.value or len(devices)], None, None
  # Compile-only accelerators and fake CPU devices both run on the CPU platform: jax must not
  # try to open an accelerator that is not here.
  jax.config.update("jax_platforms", "cpu")
  target = targets_lib.get(_TARGET.value) if _TARGET.value else None
  if target is not None:
    if _DEVICES.value and _DEVICES.value != target.chips:
      raise ConfigError(
        f"--devices={_DEVICES.value} but {target.name} has {target.chips} chips; drop --devices."
      )
    try:
      return targets_lib.devices(target), target, None
    except targets_lib.CompilerMissing as e:
      note = (
        f"FALLBACK: {e}. Planning on {target.chips} fake CPU devices instead: XLA:CPU's "
        "memory analysis, an estimate that can differ from the chip's by several GiB."
      )
      n = target.chips
  else:
    n = _DEVICES.value or 8
    note = None
  jax.config.update("jax_num_cpu_devices", n)
  if len(jax.devices()) < n:
    raise ConfigError(
      f"{n} fake CPU devices were asked for but only {len(jax.devices())} "
      "exist (is XLA_FLAGS setting --xla_force_host_platform_device_count? "
      "unset it)."
    )
  return jax.devices()[:n], target, note


def main(argv):
  del argv
  if _LIST.value:
    print(_list_targets(), end="")
    return
  if _CONFIG.value is None:
    sys.exit("error: --config is required (e.g. --config=configs/433m.py).")
  cfg = _CONFIG.value
  try:
    if _TARGET.value and _ACCELERATOR.value:
      raise ConfigError(
        "--accelerator is for fake CPU devices; --target already knows its "
        "chip's memory: drop --accelerator."
      )
    validate_model_config(cfg.model)  # the data side is not needed for a plan
    validate_mesh_config(cfg.mesh)
    devices, target, note = _devices_and_target()
    if note:
      print(note, file=sys.stderr, flush=True)
    if target and not note:
      what = f"{target.name} ({len(devices)} x {devices[0].device_kind})"
    elif _REAL.value:
      what = f"this machine's {len(devices)} {devices[0].platform.upper()} device(s)"
    else:
      what = f"{len(devices)} fake CPU device(s)"
    print(
      f"Compiling the joint train step ahead of time for {what}, nothing allocated; no "
      "output until it is done. For 433m this has taken 1-3 minutes on a 2-core CPU (the "
      "TPU compiler is the slowest) and longer on a busy one...",
      file=sys.stderr,
      flush=True,
    )
    plan = plan_lib.make_plan(
      cfg,
      devices,
      hbm_bytes=target.hbm_bytes if target else None,
      target=target.name if target else None,
    )
  except targets_lib.UnknownTarget as e:
    sys.exit(f"error: {e}")
  except ConfigError as e:
    sys.exit(f"error: {e}")
  print(plan_lib.format_plan(plan, _ACCELERATOR.value), end="")
  if note:
    print(note)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(plan_lib.to_json(plan, fallback=note), f, indent=1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
