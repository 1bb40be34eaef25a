"""What every benchmark shares: interleaved timing, peak memory of this process, and writing its
result."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Hashable
from typing import Any

GiB = 2**30


def peak_rss(field: str = "VmHWM") -> float:
  """This process' peak resident set in GiB (VmHWM; unlike ru_maxrss it is not inherited on
  exec), or another /proc/self/status field (VmRSS: the current one)."""
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) for l in f if l.startswith(field)) * 1024 / GiB


def write_result(res: Any, out: str | None, indent: int = 2) -> None:
  """The result as JSON into `out` (if given): the file BENCHMARKS.md figures come from."""
  if out:
    with open(out, "w") as f:
      json.dump(res, f, indent=indent)


def interleaved_times(runners: dict[Hashable, Callable[[], Any]], reps: int,
                      slow_s: float = float("inf"), slow_reps: int = 3) -> dict[Hashable, list[float]]:
  """Seconds per call of each runner, called round-robin `reps` times after one warm-up call each,
  so that a shared machine's drift hits every candidate alike. A runner whose warm-up took longer
  than `slow_s` is timed `min(reps, slow_reps)` times only."""
  caps = {}
  for key, run in runners.items():
    t0 = time.perf_counter()
    run()
    caps[key] = reps if time.perf_counter() - t0 < slow_s else min(reps, slow_reps)
  times = {key: [] for key in runners}
  for rep in range(reps):
    for key, run in runners.items():
      if rep < caps[key]:
        t0 = time.perf_counter()
        run()
        times[key].append(time.perf_counter() - t0)
  return times
