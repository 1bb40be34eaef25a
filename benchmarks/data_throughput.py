"""Does data loading keep up with training? Frames decoded per second (building the store from
scratch), crops served per second (one process, `CropSource.examples`) at the preset's input and
at the le2012 input (200x200x3), against the crops per second the train step consumes; then the
share of `train.fit`'s time spent waiting for input (`lcnet.loader`), in the default loader
configuration first and beside it with Grain workers and without prefetch. All in one run.

    python -m benchmarks.data_throughput [--preset cpu_default] [--seconds 5] [--fit-steps 400]
        [--out data.json]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from benchmarks.common import write_result


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--preset", default="cpu_default")
  ap.add_argument("--seconds", type=float, default=5.0)
  ap.add_argument("--fit-steps", type=int, default=400)
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  import jax

  from experiments import youtube_faces
  from lcnet import data
  c = youtube_faces.get_config(args.preset)
  cfg = youtube_faces.lcnet_config(c)
  cache = tempfile.mkdtemp(prefix="lcnet_data_bench_")
  res = {"command": " ".join(["python -m benchmarks.data_throughput", *sys.argv[1:]]),
         "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(),
         "device": jax.devices()[0].device_kind, "batch": cfg.train.batch_size,
         "crop": cfg.model.image_size[0]}
  try:
    t = time.perf_counter()
    src = data.source(cfg, c.data.dir, frames_per_video=c.data.frames_per_video,
                      cache_dir=cache, progress=False)
    res["cache_build_s"] = time.perf_counter() - t
    frames = data.default_corpus(data.FrameOptions(c.data.frames_per_video,
                                                   3 * cfg.model.image_size[0], True,
                                                   cfg.model.image_size[0]), cache, False)
    res["decode_report"] = {k: v for k, v in frames.report.items()
                            if k not in ("skipped", "too_small")}
    t = time.perf_counter()
    data.source(cfg, c.data.dir, frames_per_video=c.data.frames_per_video, cache_dir=cache,
                progress=False)
    res["cache_reopen_s"] = time.perf_counter() - t
    measure(args, cfg, src, res)
  finally:
    shutil.rmtree(cache, ignore_errors=True)
  print(json.dumps(res, indent=2))
  write_result(res, args.out)


def measure(args, cfg, src, res):
  import jax
  import numpy as np

  from lcnet import data, train

  def rate(fn, seconds):  # calls per second, median of 1 s windows
    out, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
      n, t = 0, time.perf_counter()
      while time.perf_counter() - t < 1.0:
        fn(n)
        n += 1
      out.append(n / (time.perf_counter() - t))
    return statistics.median(out)

  b = cfg.train.batch_size
  res["crops_per_s"] = b * rate(lambda i: src.examples(i, 0, b), args.seconds)
  state, step = train.init_state(cfg), train.make_train_step(cfg)
  batch = jax.device_put(src.examples(0, 0, b))
  state, m = step(state, batch)
  jax.block_until_ready(m)

  def one(_):
    nonlocal state
    state, m = step(state, batch)
    jax.block_until_ready(m)
  res["train_crops_per_s"] = b * rate(one, args.seconds)
  res["loader_over_train"] = res["crops_per_s"] / res["train_crops_per_s"]
  rng = np.random.default_rng(0)  # the le2012 input: 200x200x3 crops of 240x320 RGB frames
  big = data.CropSource([rng.integers(0, 255, (240, 320, 3), np.uint8) for _ in range(64)], 200, 64)
  res["crops_per_s_200x200x3"] = 64 * rate(lambda i: big.examples(i, 0, 64), args.seconds)
  if args.fit_steps:
    res["fit"] = []
    for workers, prefetch in ((cfg.train.loader_workers, cfg.train.prefetch), (1, 2), (0, 0)):
      c = cfg.replace(train=dict(steps=args.fit_steps, log_every=10, loader_workers=workers,
                                 prefetch=prefetch))
      t = time.perf_counter()
      r = train.fit(c, src)
      wall = time.perf_counter() - t
      late = [h["input_wait"] for h in r.history if h["step"] >= args.fit_steps // 4]
      res["fit"].append({"loader_workers": workers, "prefetch": prefetch, "wall_s": wall,
                         "input_wait_total_share": r.input_wait_s / wall,
                         "input_wait_median_share_after_warmup": statistics.median(late),
                         "steps_per_s_after_warmup": (len(late) * 10) / (
                             r.history[-1]["seconds"] - r.history[-len(late)]["seconds"])})
      print(res["fit"][-1], flush=True)


if __name__ == "__main__":
  main()
