"""Stopping a run cleanly on SIGTERM / SIGINT: the first signal asks the run to stop after the
current step (the trainer then commits a checkpoint); a second one stops at once, unsaved.

With several processes every process must stop at the same step: jax's preemption service (on
when `jax.distributed` runs it) owns SIGTERM and agrees on a step; without it the processes'
flags are gathered at every step.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from lcnet import _jax_private


class StopRequest:
  """Signal handlers for SIGINT (and SIGTERM unless jax's preemption service owns it), installed
  from the main thread until `close()`; `should_stop(step)` asks whether to stop now.

  `reached_preemption(step)`: jax's preemption sync point, as the caller's checkpoint manager asks
  it (orbax's `CheckpointManager.reached_preemption`, which also makes that step due to save)."""

  def __init__(self, reached_preemption: Callable[[int], bool] = (
      multihost_utils.reached_preemption_sync_point)):
    self._reached_preemption = reached_preemption
    self.signal: int | None = None  # the signal that asked to stop, once one has
    self._previous: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
      return  # signal handlers can only be set from the main thread
    multi = jax.process_count() > 1 and _jax_private.preemption_service_running()
    for sig in ((signal.SIGINT,) if multi else (signal.SIGINT, signal.SIGTERM)):
      self._previous[sig] = signal.signal(sig, self._on_signal)

  def _on_signal(self, signum, frame):
    if self.signal is not None:  # a second signal: stop at once, the usual way
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      os.kill(os.getpid(), signum)
      return
    self.signal = signum
    sys.stderr.write(f"lcnet: received {signal.Signals(signum).name}: saving a checkpoint after "
                     f"this step, then stopping (send it again to stop at once, unsaved)\n")
    if (jax.process_count() > 1 and signum == signal.SIGINT
        and _jax_private.preemption_service_running()):
      os.kill(os.getpid(), signal.SIGTERM)  # tell jax's preemption service, which tells all hosts

  def should_stop(self, step: int) -> bool:
    """True once a stop was asked for. One process: the handler's flag. Several: jax's preemption
    sync point, so every process stops at the same step (call it at every step on every
    process); without jax's preemption service, the flags of all processes are gathered."""
    if jax.process_count() == 1:
      return self.signal is not None
    if _jax_private.preemption_service_running():
      return self._reached_preemption(step)
    return bool(np.any(multihost_utils.process_allgather(np.int32(self.signal is not None))))

  def name(self) -> str:
    """What asked to stop, for messages."""
    if self.signal:
      return signal.Signals(self.signal).name
    return "a preemption notice" if jax.process_count() > 1 else "request"

  def close(self):
    """Give back the previous signal handlers."""
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
