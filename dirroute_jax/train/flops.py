"""MFU: achieved model FLOP/s per device / the chip's dense bf16 peak.

The model FLOPs per token, and their convention, are model/flops.py's; this module holds the
chips' peaks that training's progress lines and the plan divide by.
"""

from __future__ import annotations

# Dense bf16 peak FLOP/s per chip (vendor datasheets, no sparsity).
PEAK_FLOPS = {
  "h100": 989e12,
  "h200": 989e12,
  "a100": 312e12,
  "tpu v4": 275e12,
  "tpu v5 lite": 197e12,
  "tpu v5e": 197e12,
  "tpu v5p": 459e12,
  "tpu v5": 459e12,
  "tpu v6 lite": 918e12,
  "tpu v6e": 918e12,
}


def peak_flops_per_device(device_kind: str) -> float | None:
  """The dense bf16 peak for a `jax.Device.device_kind`, or None (e.g. CPU: no MFU)."""
  kind = device_kind.lower()
  for name in sorted(PEAK_FLOPS, key=len, reverse=True):
    if name in kind:
      return PEAK_FLOPS[name]
  return None
