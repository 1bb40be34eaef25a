"""TensorBoard logs of a run, through tensorboardX's event writer (no TensorFlow).

Each logged step is one event holding all its scalars (8 scalars: 6x cheaper than one event per
scalar, BENCHMARKS.md "TensorBoard writers"); images (filters, the optimal stimulus) and
histograms (weights, the unit's responses) are added at evaluation time. A resumed run first
writes a START at the resumed step, which makes TensorBoard drop the earlier run's events from
that step on (as `metrics.jsonl` is trimmed).
"""
from __future__ import annotations

import time

import numpy as np
from tensorboardX import FileWriter
from tensorboardX import summary as tbx_summary
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary


def unit_range(image) -> np.ndarray:
  """An image (any range) scaled to 0..1 on its own: how every run-log writer shows it."""
  a = np.asarray(image, np.float32)
  lo, hi = float(a.min()), float(a.max())
  return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


class Writer:
  """Events into a new events.out.tfevents.* file in `logdir` (flushed every `flush_secs`, and on
  `flush`/`close`)."""

  def __init__(self, logdir: str, resumed_step: int | None = None, flush_secs: int = 10):
    # the name has whole seconds only, and the file is opened "wb": a suffix in nanoseconds keeps
    # two writers of one second (a quick resume) apart, and in time order
    self._w = FileWriter(logdir, flush_secs=flush_secs, filename_suffix=f".{time.time_ns()}.lcnet")
    if resumed_step is not None:  # TensorBoard purges the old run's events at steps >= this
      self._w.add_event(Event(wall_time=time.time(), step=resumed_step,
                              session_log=SessionLog(status=SessionLog.START)))
      self._w.flush()

  def scalars(self, step: int, values: dict[str, float]):
    s = Summary(value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()])
    self._w.add_summary(s, step)

  def images(self, step: int, images: dict[str, np.ndarray]):
    """Images [H, W] or [H, W, C] (C 1 or 3), any range: each is scaled to 0..255 on its own."""
    for tag, im in images.items():
      a = unit_range(im)
      a = a[..., None] if a.ndim == 2 else a
      self._w.add_summary(tbx_summary.image(tag, a, dataformats="HWC"), step)

  def histograms(self, step: int, values: dict[str, np.ndarray], bins: int = 64):
    for tag, v in values.items():
      self._w.add_summary(tbx_summary.histogram(tag, np.asarray(v, np.float64).ravel(), bins), step)

  def flush(self):
    self._w.flush()

  def close(self):
    self._w.close()
