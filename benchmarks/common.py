"""What every benchmark shares: peak memory of this process, and writing its result."""
from __future__ import annotations

import json
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
