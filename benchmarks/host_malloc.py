"""The experiment's train step with and without `lcnet.hostmem.keep_heap()`, side by side.

    python -m benchmarks.host_malloc [--rounds 3] [--steps 60] [--out host_malloc.json]

malloc's settings are per process, so each measurement is a fresh process (the default and the
kept heap alternate, `--rounds` times each): it builds the experiment's default train step
(`experiments.youtube_faces`, as `make run` compiles it), runs 5 warm-up steps on random batches,
then times `--steps` steps, reporting the median seconds per step and, per step, the process's
minor page faults and its system and user CPU seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from benchmarks.common import write_result


def measure(keep: bool, steps: int) -> dict:
  """One process's figures (run in a fresh interpreter by `main`)."""
  from lcnet import hostmem
  kept = hostmem.keep_heap() if keep else False
  import jax
  import numpy as np

  from experiments import youtube_faces
  from lcnet import model, train
  cfg = model.resolved(youtube_faces.lcnet_config(youtube_faces.get_config()))
  state, step = train.init_state(cfg), train.make_train_step(cfg)
  rng = np.random.default_rng(0)
  shape = (cfg.train.batch_size, *cfg.model.image_size, cfg.model.channels)
  batches = [jax.device_put(rng.standard_normal(shape, np.float32)) for _ in range(4)]
  for i in range(5):
    state, metrics = step(state, batches[i % 4])
  jax.block_until_ready(metrics)
  r0, times = resource.getrusage(resource.RUSAGE_SELF), []
  for i in range(steps):
    t = time.perf_counter()
    state, metrics = step(state, batches[i % 4])
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  return {"keep_heap": kept, "median_step_s": statistics.median(times),
          "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
          "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / steps,
          "user_s_per_step": (r1.ru_utime - r0.ru_utime) / steps}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=60)
  ap.add_argument("--out", default=None)
  ap.add_argument("--one", choices=["default", "keep"], help=argparse.SUPPRESS)  # a child process
  args = ap.parse_args(argv)
  if args.one:
    print(json.dumps(measure(args.one == "keep", args.steps)))
    return None
  rows = {"default": [], "keep": []}
  for r in range(args.rounds):
    for mode in rows:
      out = subprocess.run([sys.executable, "-m", "benchmarks.host_malloc", "--one", mode,
                            "--steps", str(args.steps)], env={**os.environ, "XLA_FLAGS": ""},
                           capture_output=True, text=True, check=True).stdout
      rows[mode].append(json.loads(out.strip().splitlines()[-1]))
      print(f"round {r} {mode}: {rows[mode][-1]}", flush=True)
  res = {mode: {k: statistics.median(x[k] for x in runs) for k in runs[0] if k != "keep_heap"}
         for mode, runs in rows.items()}
  res["step_ratio_default_over_keep"] = (res["default"]["median_step_s"]
                                         / res["keep"]["median_step_s"])
  res["runs"] = rows
  print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))
  write_result(res, args.out)
  return res


if __name__ == "__main__":
  main()
