"""A profiler window: `config.profile_steps="START:STOP"` traces steps START..STOP-1.

The trace (jax.profiler, XPlane) goes to WORKDIR/profile/plugins/profile/<run>/ and opens in
TensorBoard's profile tab (`tensorboard --logdir WORKDIR/profile`), XProf or Perfetto. Each
traced step is a `StepTraceAnnotation("train", step_num=N)`, so the viewers split the trace by
step. The window ends with the device work of step STOP-1 (the state is waited for), not with
its dispatch. Every process traces its own devices (local workdirs; a gs:// workdir works where
TensorBoard's profile plugin can write to it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import jax

from dirroute_jax import workdir as workdir_lib
from dirroute_jax.config import parse_profile_steps


class ProfileWindow:
  def __init__(self, spec: str, workdir: str, say: Callable[[str], None]):
    self.window = parse_profile_steps(spec)
    self.directory = str(workdir_lib.profile(workdir))
    self.say = say
    self.active = False

  def step(self, step: int):
    """Context for running step `step`: starts the trace at START, annotates traced steps."""
    if self.window and step == self.window[0]:
      jax.profiler.start_trace(self.directory)
      self.active = True
    if not self.active:
      return contextlib.nullcontext()
    return jax.profiler.StepTraceAnnotation("train", step_num=step)

  def after(self, step: int, state) -> None:
    """Stops the trace once step STOP-1's device work is done."""
    if self.active and step >= self.window[1] - 1:
      jax.block_until_ready(state)
      self.close()

  def close(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False
      self.say(
        f"Profile of steps {self.window[0]}..{self.window[1] - 1} written to "
        f"{self.directory} (tensorboard --logdir {self.directory}, profile tab)"
      )
