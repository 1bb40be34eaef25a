"""`train.profile_steps`: a jax.profiler trace of a range of training steps, into the run directory.

The trace covers steps [start, stop) and each step is a "train" step annotation (step_num = the
step), so TensorBoard's profile plugin and Perfetto show per-step device time. The trace is
written to RUN/profile: `tensorboard --logdir RUN/profile` (with `tensorboard-plugin-profile`),
or open RUN/profile/plugins/profile/*/perfetto_trace.json.gz in https://ui.perfetto.dev.
"""
from __future__ import annotations

import contextlib
import os

import jax

SUBDIR = "profile"


class StepProfiler:
  """Starts the trace before step `start`, stops it after step `stop - 1` has finished."""

  def __init__(self, workdir: str | None, steps: tuple[int, ...]):
    self.start, self.stop = steps if steps else (None, None)
    self.dir = os.path.join(workdir, SUBDIR) if workdir and steps else None
    self.active = False

  @contextlib.contextmanager
  def step(self, step: int):
    """Around one training step: starts the trace on the first step of the range and annotates
    the step; `finish(outputs)` after it waits for them and stops the trace on the last."""
    if self.dir and step == self.start:
      jax.profiler.start_trace(self.dir, create_perfetto_trace=True)
      self.active = True
    if self.active:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        yield
    else:
      yield

  def finish(self, step: int, outputs):
    if self.active and step == self.stop - 1:
      self.close(outputs)

  def close(self, outputs=None):
    """Stops a trace still running (the run ended or was stopped inside the range)."""
    if self.active:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      self.active = False
