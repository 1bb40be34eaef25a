"""Batches for `train.fit` through Grain, the JAX ecosystem's data loader, placed on the devices a
few steps ahead.

A record is this process' slice of one step's global batch, `data.examples(step, lo, hi)`: a pure
function of the step, so the batch of step t is the same whatever the number of processes (each
reads only its examples lo..hi-1) or of Grain worker processes (each cuts the crops of every
`workers`-th step), and a resumed run starts its records at the resumed step. A background
thread moves `prefetch` batches onto the devices ahead of the step that needs them; an error in a
worker reaches the training loop as the worker's exception, with its traceback.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import grain

from lcnet.data import host_slice
from lcnet.framestore import ignore_stop_signals


class StepSlice:
  """Step t -> this process' examples lo..hi-1 of t's global batch (picklable: Grain's workers are
  spawned processes)."""

  def __init__(self, data, lo: int, hi: int):
    self.data, self.lo, self.hi = data, lo, hi

  def __call__(self, step):
    return host_slice(self.data, int(step), self.lo, self.hi)


def host_batches(data, start: int, stop: int, lo: int, hi: int, workers: int = 0) -> grain.IterDataset:
  """Steps start..stop-1 as host arrays (this process' slice), cut by `workers` worker
  processes (0: in the reading thread)."""
  ds = grain.MapDataset.range(start, stop).map(StepSlice(data, lo, hi))
  # one reading thread: on a few cores, more would take them from the train step
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  if workers:
    _absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2),
                        worker_init_fn=ignore_stop_signals)  # SIGTERM is fit's to handle
  return it


def _absl_flags_parsed() -> None:
  """Grain <= 0.2.18 reads an absl flag when it starts workers, which fails in a program that
  never parsed absl flags (google/grain#1355, fixed after 0.2.18): mark them parsed (defaults)
  unless the program parsed them itself."""
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


class Loader(Iterator):
  """`next(loader)`: the next step's batch on the devices (`put(host_batch)`), prepared
  `prefetch` steps ahead; `wait_s` sums the time the training loop waited for it. Close it (or use
  it as a context manager) to stop the thread and the worker processes."""

  def __init__(self, data, start: int, stop: int, lo: int, hi: int,
               put: Callable, workers: int = 0, prefetch: int = 2):
    ds = host_batches(data, start, stop, lo, hi, workers).map(put)
    if prefetch:
      ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
    self._it = iter(ds)
    self.wait_s = 0.0

  def __next__(self):
    t = time.perf_counter()
    try:
      return next(self._it)
    finally:
      self.wait_s += time.perf_counter() - t

  def close(self):
    close = getattr(self._it, "close", None)
    if close:
      close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
