"""The experiment's train step with and without `lcnet.hostmem.keep_heap()`, side by side.

    python -m benchmarks.host_malloc [--rounds 3] [--steps 60] [--out host_malloc.json]
    python -m benchmarks.host_malloc --what layer [--rounds 2] [--steps 7]

malloc's settings are per process, so each measurement is a fresh process (the default and the
kept heap alternate, `--rounds` times each): it builds the experiment's default train step
(`experiments.youtube_faces`, as `make run` compiles it), runs 5 warm-up steps on random batches,
then times `--steps` steps, reporting the median seconds per step and, per step, the process's
minor page faults and its system and user CPU seconds. `--what layer` times instead what `make
bench` times at the Le-2012 shape, on one core: fwd+bwd of lcnet's local layer (compiled as lcnet
compiles its own functions) and of the shared-weight convolution (jaxlib's defaults).
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


def measure_layer(keep: bool, steps: int) -> dict:
  """The Le-2012 layer's fwd+bwd, lcnet's and the tied conv's (run in a fresh interpreter)."""
  from lcnet import hostmem
  kept = hostmem.keep_heap() if keep else False
  from benchmarks import local_layer  # pins this process to one core, then imports jax
  from lcnet import compiled
  dims = local_layer.SHAPES["le2012_200"]
  cands, _ = local_layer.jax_candidates(local_layer.make_problem(*dims), dims[4], dims[5])
  out = {"keep_heap": kept}
  r0 = resource.getrusage(resource.RUSAGE_SELF)
  for name, options in (("lcnet", compiled.options()), ("shared_conv", None)):
    run, _, _ = local_layer.compile_jax(*cands[name], options)
    run()
    times = []
    for _ in range(steps):
      t = time.perf_counter()
      run()
      times.append(time.perf_counter() - t)
    out[f"{name}_median_s"] = statistics.median(times)
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  out["faults_per_call"] = (r1.ru_minflt - r0.ru_minflt) / (2 * (steps + 1))
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--rounds", type=int, default=3)
  ap.add_argument("--steps", type=int, default=60)
  ap.add_argument("--out", default=None)
  ap.add_argument("--what", choices=["step", "layer"], default="step",
                  help="the experiment's train step, or make bench's Le-2012 layer")
  ap.add_argument("--one", choices=["default", "keep"], help=argparse.SUPPRESS)  # a child process
  args = ap.parse_args(argv)
  if args.one:
    fn = measure if args.what == "step" else measure_layer
    print(json.dumps(fn(args.one == "keep", args.steps)))
    return None
  rows = {"default": [], "keep": []}
  for r in range(args.rounds):
    for mode in rows:
      out = subprocess.run([sys.executable, "-m", "benchmarks.host_malloc", "--one", mode,
                            "--steps", str(args.steps), "--what", args.what],
                           env={**os.environ, "XLA_FLAGS": ""},
                           capture_output=True, text=True, check=True).stdout
      rows[mode].append(json.loads(out.strip().splitlines()[-1]))
      print(f"round {r} {mode}: {rows[mode][-1]}", flush=True)
  res = {mode: {k: statistics.median(x[k] for x in runs) for k in runs[0] if k != "keep_heap"}
         for mode, runs in rows.items()}
  for k in (k for k in res["keep"] if "median" in k):
    res[f"{k}_ratio_default_over_keep"] = res["default"][k] / res["keep"][k]
  res["runs"] = rows
  print(json.dumps({k: v for k, v in res.items() if k != "runs"}, indent=2))
  write_result(res, args.out)
  return res


if __name__ == "__main__":
  main()
