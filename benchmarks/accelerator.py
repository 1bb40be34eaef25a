"""Train-step throughput of a preset on one accelerator, against the fp32-peak bound.

    python -m benchmarks.accelerator --preset le2012 --batches 16 64 --precisions default highest \
        --peak-tflops 67 --out BENCHMARKS.accelerator.json

One device, the unsharded (DENSE) step: the batch is the whole global batch. For each (batch,
matmul precision) it compiles the joint train step (every layer trained, the optimiser of the
preset), runs `--warmup` steps, then `--repeats` timed groups of `--steps` steps, and reports the
median seconds per step, images/s, and the share of the bound `peak / (FLOP per image)`.
FLOP per image of a training step = 12 x encoder connections (encoder and decoder, forward, input
gradient and weight gradient, 2 FLOP per multiply-add); `--peak-tflops` is the chip's fp32 peak
(H100/H200 SXM: 67 TFLOP/s without tensor cores). `default` precision lets XLA use TF32 tensor
cores on NVIDIA GPUs; `highest` is true fp32.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

from benchmarks.common import write_result


def bench(preset: str, batch: int, precision: str, steps: int, repeats: int, warmup: int,
          peak_tflops: float, block_bytes: int = 0, contract: str = "auto",
          compute_dtype: str = "float32", param_dtype: str = "float32",
          pallas: tuple[int, int, int] = (0, 0, 0)) -> dict:
  """`pallas`: the Pallas kernels' (cols, warps, batch) tiles, 0 for the backend's default."""
  import jax
  import numpy as np

  from lcnet import model, train
  cfg = model.preset(preset)
  cfg = model.resolved(cfg.replace(train=dict(batch_size=batch, mode="joint"), model=dict(
      local_op=dict(block_bytes=block_bytes, contract=contract, pallas_cols=pallas[0],
                    pallas_warps=pallas[1], pallas_batch=pallas[2]),
      compute_dtype=compute_dtype,
      param_dtype=param_dtype)))
  flop_per_image = 12 * model.count_params(cfg)["encoder_connections"]
  with jax.default_matmul_precision(precision):
    t0 = time.perf_counter()
    state = train.init_state(cfg)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t0
    step = train.make_train_step(cfg)
    shape = (batch, *cfg.model.image_size, cfg.model.channels)
    rng = np.random.default_rng(0)
    batches = [jax.device_put(rng.standard_normal(shape, np.float32).astype(compute_dtype))
               for _ in range(steps)]
    t0 = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    first_s = time.perf_counter() - t0
    for i in range(warmup):
      state, metrics = step(state, batches[i % steps])
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      for b in batches:
        state, metrics = step(state, b)
      jax.block_until_ready(metrics)
      times.append((time.perf_counter() - t0) / steps)
  med = statistics.median(times)
  ips = batch / med
  bound = peak_tflops * 1e12 / flop_per_image
  stats = jax.devices()[0].memory_stats() or {}
  out = {"preset": preset, "batch": batch, "precision": precision,
         "compute_dtype": compute_dtype, "param_dtype": param_dtype,
         "block_bytes": cfg.model.local_op.block_bytes, "contract": cfg.model.local_op.contract,
         "cols": cfg.model.local_op.pallas_cols, "num_warps": cfg.model.local_op.pallas_warps,
         "batch_tile": cfg.model.local_op.pallas_batch,
         "median_s_per_step": med, "all_s_per_step": times, "images_per_s": ips,
         "achieved_tflops": ips * flop_per_image / 1e12, "fp32_bound_images_per_s": bound,
         "share_of_bound": ips / bound, "first_step_s": first_s, "init_s": init_s,
         "loss": float(metrics["total"]), "gflop_per_image": flop_per_image / 1e9,
         "peak_device_gib": stats.get("peak_bytes_in_use", 0) / 2**30}
  del state
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="le2012")
  ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
  ap.add_argument("--precisions", nargs="+", default=["default", "highest"])
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--peak-tflops", type=float, default=67.0)
  ap.add_argument("--block-bytes", type=int, nargs="+", default=[0],
                  help="model.local_op.block_bytes values to sweep (0: lcnet's for the backend)")
  ap.add_argument("--contracts", nargs="+", default=["auto"],
                  help="model.local_op.contract values to sweep: auto, broadcast, einsum")
  ap.add_argument("--jaxlib-defaults", action="store_true",
                  help="compile the step with jaxlib's default options instead of lcnet's "
                       "(lcnet.compiled: YNNPACK dots only on CPU), to measure what they change")
  ap.add_argument("--ynn-off", action="store_true",
                  help="compile the step with every YNNPACK fusion off (lcnet's CPU options until "
                       "2026-12-01), to compare with YNNPACK fusing dots only")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  if args.jaxlib_defaults and args.ynn_off:
    ap.error("--jaxlib-defaults and --ynn-off are two different settings: give one")
  import jax
  if args.jaxlib_defaults or args.ynn_off:
    from lcnet import compiled
    compiled.OPTIONS.clear()
    if args.ynn_off:
      compiled.OPTIONS["cpu"] = [{"xla_cpu_experimental_ynn_fusion_type": ""}]
    compiled._supported.cache_clear()
  dev = jax.devices()[0]
  info = {"command": " ".join(["python -m benchmarks.accelerator", *sys.argv[1:]]),
          "device": getattr(dev, "device_kind", str(dev)), "platform": dev.platform,
          "host": f"{platform.machine()}", "date": time.strftime("%Y-%m-%d"),
          "jax": jax.__version__, "peak_tflops": args.peak_tflops,
          "compiler_options": ("jaxlib defaults" if args.jaxlib_defaults else
                               "YNNPACK off" if args.ynn_off else "lcnet's")}
  print(json.dumps(info), flush=True)
  results = []
  import itertools
  for b, p, blk, con in itertools.product(args.batches, args.precisions, args.block_bytes,
                                          args.contracts):
    try:
      r = bench(args.preset, b, p, args.steps, args.repeats, args.warmup, args.peak_tflops, blk, con)
      results.append(r)
      print(json.dumps({k: v for k, v in results[-1].items() if k != "all_s_per_step"}),
            flush=True)
    except Exception as e:  # e.g. out of memory at a large batch: report it and go on
      results.append({"block_bytes": blk, "contract": con, "batch": b, "precision": p,
                      "error": f"{type(e).__name__}: {e}"[:500]})
      print(json.dumps(results[-1]), flush=True)
  res = {**info, "results": results}
  write_result(res, args.out)
  return res


if __name__ == "__main__":
  main()
