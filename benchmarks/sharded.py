"""Sharded training step benchmarks (issue 3 targets), on simulated CPU devices.

    python -m benchmarks.sharded steps --preset cpu_default --meshes 1,1,1 1,2,4 8,1,1
    python -m benchmarks.sharded le2012 --mesh 1,2,4 --mode greedy --steps 3

`steps`: one process, the presets' train step on several meshes, run interleaved (round-robin
repeats) so machine noise hits every mesh alike; reports the median seconds per step.
`le2012`: a real le2012 model, born sharded on the mesh, real training steps; seconds per step
(per stage in greedy mode) and the process's peak RSS.
Writes JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from benchmarks.common import peak_rss, write_result


def _devices(n: int):
  os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={n}")


def _mesh(text: str):
  return tuple(int(v) for v in text.split(","))


def _source(cfg):
  import numpy as np

  class Noise:
    def examples(self, step, lo, hi):
      rng = np.random.default_rng(step)
      return rng.standard_normal((hi - lo, *cfg.model.image_size, cfg.model.channels)).astype(np.float32)
  return Noise()


def bench_steps(preset: str, meshes, repeats: int, steps: int, batch: int | None):
  import jax

  from lcnet import mesh as mesh_lib
  from lcnet import model, train
  from lcnet.config import MeshConfig
  runs = {}
  for m in meshes:
    cfg = model.preset(preset)
    cfg = cfg.replace(train=dict(batch_size=batch or cfg.train.batch_size), mesh=MeshConfig(*m))
    state = train.init_state(cfg)
    step = train.make_train_step(cfg)
    put = mesh_lib.batch_putter(cfg, _source(cfg))
    t0 = time.perf_counter()
    state, metrics = step(state, put(0))
    jax.block_until_ready(metrics)
    runs[m] = {"cfg": cfg, "state": state, "step": step, "put": put, "times": [],
               "first_step_s": time.perf_counter() - t0}
  for r in range(repeats):
    for _, run in runs.items():
      batches = [run["put"](1 + r * steps + i) for i in range(steps)]
      jax.block_until_ready(batches)
      t0 = time.perf_counter()
      for b in batches:
        run["state"], metrics = run["step"](run["state"], b)
      jax.block_until_ready(metrics)
      run["times"].append((time.perf_counter() - t0) / steps)
  base = statistics.median(runs[meshes[0]]["times"])
  out = {}
  for m, run in runs.items():
    med = statistics.median(run["times"])
    out["x".join(map(str, m))] = {"median_s_per_step": med, "ratio_to_first": med / base,
                                  "all_s_per_step": run["times"], "first_step_s": run["first_step_s"]}
  return out


def bench_le2012(mesh, mode: str, steps: int, batch: int, optimizer: str):
  import jax

  from lcnet import mesh as mesh_lib
  from lcnet import model, train
  from lcnet.config import MeshConfig
  cfg = model.preset("le2012")
  cfg = cfg.replace(train=dict(batch_size=batch, optimizer=optimizer, mode=mode,
                               steps=steps * (3 if mode == "greedy" else 1)), mesh=MeshConfig(*mesh))
  t0 = time.perf_counter()
  state = train.init_state(cfg)
  jax.block_until_ready(state)
  out = {"params": model.count_params(cfg), "init_s": time.perf_counter() - t0,
         "rss_after_init_gib": peak_rss(), "stages": []}
  print(f"init {out['init_s']:.1f}s, peak RSS {out['rss_after_init_gib']:.2f} GiB", flush=True)
  put = mesh_lib.batch_putter(cfg, _source(cfg))
  t = 0
  for active, n in train.stages(cfg):
    step = train.make_train_step(cfg, active, n)
    times, losses = [], []
    for _ in range(n):
      b = put(t)
      jax.block_until_ready(b)
      t0 = time.perf_counter()
      state, metrics = step(state, b)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - t0)
      losses.append(float(metrics["total"]))
      t += 1
      print(f"stage {active}: step {t} {times[-1]:.1f}s loss {losses[-1]:.1f} "
            f"peak RSS {peak_rss():.2f} GiB", flush=True)
    out["stages"].append({"active": list(active), "step_s": times, "losses": losses,
                          "median_step_s_after_first": statistics.median(times[1:] or times),
                          "peak_rss_gib": peak_rss()})
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="what", required=True)
  s = sub.add_parser("steps")
  s.add_argument("--preset", default="cpu_default")
  s.add_argument("--meshes", nargs="+", default=["1,1,1", "1,2,4", "8,1,1"])
  s.add_argument("--repeats", type=int, default=5)
  s.add_argument("--steps", type=int, default=5)
  s.add_argument("--batch", type=int, default=None)
  l = sub.add_parser("le2012")
  l.add_argument("--mesh", default="1,2,4")
  l.add_argument("--mode", default="greedy", choices=["greedy", "joint"])
  l.add_argument("--steps", type=int, default=3, help="per stage")
  l.add_argument("--batch", type=int, default=4)
  l.add_argument("--optimizer", default="sgd")
  for p in (s, l):
    p.add_argument("--out", default=None, help="write the JSON here")
  args = ap.parse_args(argv)
  _devices(8)
  import jax
  info = {"command": " ".join(sys.argv), "machine": f"{platform.machine()} {os.cpu_count()} cores",
          "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__, "devices": jax.device_count()}
  if args.what == "steps":
    res = bench_steps(args.preset, [_mesh(m) for m in args.meshes], args.repeats, args.steps, args.batch)
  else:
    res = bench_le2012(_mesh(args.mesh), args.mode, args.steps, args.batch, args.optimizer)
  res = {**info, "results": res}
  print(json.dumps(res, indent=2))
  write_result(res, args.out)


if __name__ == "__main__":
  main()
