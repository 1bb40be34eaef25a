"""A run directory's logs: config.json (the config that runs), metrics.jsonl and TensorBoard event
files with the same scalars. On resume both logs forget the steps after the checkpoint being
resumed, so every step appears once. Only one process writes (`jax.process_index() == 0`)."""
from __future__ import annotations

import json
import os

import jax

from lcnet import tblog
from lcnet.config import Config


class RunLog:
  """`RunLog(workdir, cfg, resumed_step)`, then `write(step, scalars)` per logged step, `close()`."""

  def __init__(self, workdir: str, cfg: Config, resumed_step: int | None = None):
    self.writer = jax.process_index() == 0  # one writer of the run's files
    if not self.writer:
      return
    os.makedirs(workdir, exist_ok=True)
    write_atomically(os.path.join(workdir, "config.json"), cfg.to_json())
    self.path = os.path.join(workdir, "metrics.jsonl")
    trim(self.path, resumed_step or 0)
    self._jsonl = open(self.path, "a")
    self._tb = tblog.Writer(workdir, resumed_step)

  def write(self, step: int, scalars: dict[str, float]):
    if not self.writer:
      return
    self._jsonl.write(json.dumps({**scalars, "step": step}) + "\n")
    self._jsonl.flush()
    self._tb.scalars(step, {k: v for k, v in scalars.items() if k != "step"})

  def close(self):
    if self.writer:
      self._jsonl.close()
      self._tb.close()


def trim(path: str, step: int):
  """Drop metrics.jsonl lines of steps >= `step` (logged after the checkpoint being resumed)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    keep = [line for line in f if line.strip() and json.loads(line).get("step", -1) < step]
  write_atomically(path, "".join(keep))


def write_atomically(path: str, text: str):
  """Write `text` to a temporary file, then rename it over `path`: readers see old or new, whole."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
