"""Forward+backward of an untied local layer: lcnet.ops.local_filter against its alternatives.

    taskset -c 1 .venv/bin/python -m benchmarks.local_layer --out BENCHMARKS.local_layer.json

Every candidate computes the loss sum(y * g) and its gradients w.r.t. both the input and the
weights (value_and_grad, so the forward pass cannot be dead-code eliminated). Candidates are
interleaved round-robin within each repetition in one pinned, single-threaded process; medians
are quoted. Each JAX candidate is compiled three times: with jaxlib's defaults (YNNPACK on), with
the options lcnet compiles its own functions with (`lcnet.compiled`: YNNPACK dots only), and with
every YNNPACK fusion off. The headline
ratios are the default configuration, what a user gets: lcnet as lcnet compiles it against the
others under a plain jax.jit; the tuned ratios (each candidate's best setting) stand beside them.
Peak memory is compiled.memory_analysis() argument + output + temp bytes. The PyTorch
unfold+einsum recipe runs only if `import torch` works (optional extra `bench`).
"""
from __future__ import annotations

import os

if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:  # before jax starts
  os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from benchmarks.common import interleaved_times
from lcnet import compiled, ops

SHAPES = {  # name: (N, H, W, C, k, stride, F)
    "small_32": (8, 32, 32, 3, 8, 2, 8),
    "mid_64": (16, 64, 64, 3, 10, 2, 8),
    "le2012_200": (4, 200, 200, 3, 18, 2, 8),
}
# jaxlib_default: what a function gets from a plain jax.jit; lcnet_default: the options lcnet
# compiles its own functions with (`lcnet.compiled`: on CPU, YNNPACK fuses dots only).
# ynn_off: every YNNPACK fusion off (lcnet's options until 2026-12-01), for comparison.
SETTINGS = {"jaxlib_default": None, "lcnet_default": compiled.options("cpu")}
if compiled.options("cpu") is not None:  # a jaxlib with YNNPACK fusions to switch off
  SETTINGS["ynn_off"] = {"xla_cpu_experimental_ynn_fusion_type": ""}
DEFAULT_SETTING = {"lcnet": "lcnet_default"}  # every other candidate: jaxlib_default
DN = ("NHWC", "HWIO", "NHWC")
F32 = 4


def _loss_and_grads(layer):
  """(x, w, g) -> (sum(layer(x, w) * g), (dx, dw)); g is an argument so nothing constant-folds."""
  return jax.value_and_grad(lambda x, w, g: jnp.sum(layer(x, w) * g), argnums=(0, 1))


def make_problem(n, h, w_in, c, k, s, f, seed=0):
  """Inputs in each candidate's native layout (layout changes are not timed)."""
  ho, wo = ops.output_size(h, k, s), ops.output_size(w_in, k, s)
  rng = np.random.default_rng(seed)
  x_NxHxWxC = rng.standard_normal((n, h, w_in, c), np.float32)
  w_HoxWoxKxKxCxF = rng.standard_normal((ho, wo, k, k, c, f), np.float32) / k
  g_NxHoxWoxF = rng.standard_normal((n, ho, wo, f), np.float32)
  w_HoxWoxCKKxF = w_HoxWoxKxKxCxF.transpose(0, 1, 4, 2, 3, 5).reshape(ho, wo, c * k * k, f)
  w_KxKxCxF = rng.standard_normal((k, k, c, f), np.float32) / k
  return dict(x=x_NxHxWxC, w=w_HoxWoxKxKxCxF, g=g_NxHoxWoxF, w_lax=w_HoxWoxCKKxF, w_conv=w_KxKxCxF,
              ho=ho, wo=wo)


def jax_candidates(p, k, s):
  """name -> (jittable fn, args). Local-layer candidates first, then the two references."""
  x, g, st = p["x"], p["g"], (s, s)
  lcnet = lambda x, w: ops.local_filter(x, w, st)
  lax_local = lambda x, w: lax.conv_general_dilated_local(x, w, st, "VALID", (k, k), dimension_numbers=DN)
  conv = lambda x, w: lax.conv_general_dilated(x, w, st, "VALID", dimension_numbers=DN)
  # Dense GEMM with the fwd FLOPs of the layer: 2*m*kk*nn ~ 2*N*Ho*Wo*k*k*C*F, grads of both.
  m = max(8, round((p["x"].shape[0] * p["ho"] * p["wo"] * k * k * p["x"].shape[3] * p["g"].shape[3])
                   ** (1 / 3)))
  rng = np.random.default_rng(1)
  a, b, gm = (rng.standard_normal((m, m), np.float32) for _ in range(3))
  grad_of = lambda argnum: jax.grad(lambda x, w, g: jnp.sum(lcnet(x, w) * g), argnums=argnum)
  return {
      "lcnet": (_loss_and_grads(lcnet), (x, p["w"], g)),
      "lax_local": (_loss_and_grads(lax_local), (x, p["w_lax"], g)),
      "shared_conv": (_loss_and_grads(conv), (x, p["w_conv"], g)),
      "gemm": (_loss_and_grads(jnp.matmul), (a, b, gm)),
      # Phases of lcnet alone (not part of the main table): the gradient-only functions are
      # linear in what they differentiate, so XLA drops the unused forward.
      "lcnet.fwd": (lcnet, (x, p["w"])),
      "lcnet.wgrad": (grad_of(1), (x, p["w"], g)),
      "lcnet.igrad": (grad_of(0), (x, p["w"], g)),
  }, 2 * m ** 3


def compile_jax(fn, args, options):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile(compiler_options=options)
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  mem = {"argument": mem.argument_size_in_bytes, "output": mem.output_size_in_bytes,
         "temp": mem.temp_size_in_bytes}
  mem["total"] = sum(mem.values())
  dev_args = [jax.device_put(a) for a in args]
  run = lambda: jax.block_until_ready(compiled(*dev_args))
  return run, seconds, mem


def torch_candidate(p, k, s):
  """The common PyTorch recipe: F.unfold patches, then einsum with per-location weights."""
  try:
    import torch
  except ImportError as e:
    print(f"note: PyTorch unfold+einsum skipped ({e}); `pip install .[bench]` to include it")
    return None
  torch.set_num_threads(1)
  x = torch.from_numpy(p["x"].transpose(0, 3, 1, 2).copy()).requires_grad_()  # N, C, H, W
  ho, wo, ckk, f = p["w_lax"].shape
  w_LxCKKxF = torch.from_numpy(p["w_lax"].reshape(ho * wo, ckk, f).copy()).requires_grad_()
  g_NxLxF = torch.from_numpy(p["g"].reshape(-1, ho * wo, f).copy())

  def run():
    patches_NxCKKxL = torch.nn.functional.unfold(x, k, stride=s)
    y = torch.einsum("nkl,lkf->nlf", patches_NxCKKxL, w_LxCKKxF)
    loss = (y * g_NxLxF).sum()
    return loss, torch.autograd.grad(loss, (x, w_LxCKKxF))
  return run


def copy_bandwidth_gbps(fresh=False, nbytes=256 << 20, reps=7):
  """numpy copy of a large float32 array, (read + write bytes) / median time. fresh=True copies
  into a newly allocated array each time, paying the page faults a new XLA output buffer pays."""
  src = np.ones(nbytes // F32, np.float32)
  dst = np.empty_like(src)
  np.copyto(dst, src)
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    np.copyto(np.empty_like(src) if fresh else dst, src)
    times.append(time.perf_counter() - t0)
  return 2 * nbytes / statistics.median(times) / 1e9


def traffic_model(n, h, w_in, c, k, s, f, ho, wo):
  """Minimum bytes a fwd+bwd must move: weights read twice (y, dx) and dw written once; x read
  twice (y, dw) and dx written once; g read twice (dx, dw), y written once. 'patches' adds a
  materialised patch tensor written once and read twice (y, dw)."""
  w_b, x_b, y_b = ho * wo * k * k * c * f * F32, n * h * w_in * c * F32, n * ho * wo * f * F32
  patch_b = n * ho * wo * k * k * c * F32
  minimal = 3 * w_b + 3 * x_b + 3 * y_b
  return {"weights": w_b, "input": x_b, "output": y_b, "patches": patch_b, "minimal": minimal,
          "with_patches": minimal + 3 * patch_b}


def bench_shape(name, dims, reps, use_torch):
  n, h, w_in, c, k, s, f = dims
  p = make_problem(*dims)
  flops_fwd = 2 * n * p["ho"] * p["wo"] * k * k * c * f
  cands, gemm_flops_fwd = jax_candidates(p, k, s)
  runners, meta = {}, {}
  for cname, (fn, args) in cands.items():
    for sname, opts in SETTINGS.items():
      runners[(cname, sname)], csec, mem = compile_jax(fn, args, opts)
      meta[(cname, sname)] = {"compile_s": csec, "memory_bytes": mem}
  if use_torch and (run := torch_candidate(p, k, s)) is not None:
    runners[("torch_unfold_einsum", "eager")] = run
    meta[("torch_unfold_einsum", "eager")] = {"compile_s": None, "memory_bytes": None}
  # A candidate whose warm-up call takes > 3 s is capped at 3 timed reps.
  times = interleaved_times(runners, reps, slow_s=3.0)
  rows = []
  for (cname, sname), ts in times.items():
    med = statistics.median(ts)
    flops = {"gemm": 3 * gemm_flops_fwd, "lcnet.fwd": flops_fwd, "lcnet.wgrad": flops_fwd,
             "lcnet.igrad": flops_fwd}.get(cname, 3 * flops_fwd)
    rows.append({"candidate": cname, "setting": sname, "median_ms": med * 1e3,
                 "times_ms": [t * 1e3 for t in ts], "gflops": flops / med / 1e9,
                 **meta[(cname, sname)]})
  return {"name": name, "dims": dict(zip("N H W C k stride F".split(), dims)), "Ho": p["ho"],
          "Wo": p["wo"], "flops_fwd": flops_fwd, "flops_fwd_bwd": 3 * flops_fwd,
          "gemm_dims": round((gemm_flops_fwd / 2) ** (1 / 3)),
          "traffic_bytes": traffic_model(*dims, p["ho"], p["wo"]), "rows": rows}


def best(rows, cname):
  return min((r for r in rows if r["candidate"] == cname), key=lambda r: r["median_ms"], default=None)


def summarise(shape, bw_gbps):
  """Adds GEMM fraction and bandwidth-roofline fraction to each row; returns the ratios."""
  rows, traffic = shape["rows"], shape["traffic_bytes"]
  gemm = best(rows, "gemm")
  for r in rows:
    r["frac_gemm"] = r["gflops"] / gemm["gflops"]
    if r["candidate"] in ("lcnet", "lax_local", "torch_unfold_einsum"):
      r["frac_bw_roofline"] = traffic["minimal"] / (bw_gbps * 1e9) / (r["median_ms"] / 1e3)
  lc, ll, conv = best(rows, "lcnet"), best(rows, "lax_local"), best(rows, "shared_conv")
  d = {c: next(r for r in rows if r["candidate"] == c
               and r["setting"] == DEFAULT_SETTING.get(c, "jaxlib_default"))
       for c in ("lcnet", "lax_local", "shared_conv")}
  return {"default_lax_local_over_lcnet": d["lax_local"]["median_ms"] / d["lcnet"]["median_ms"],
          "default_lcnet_over_shared_conv": d["lcnet"]["median_ms"] / d["shared_conv"]["median_ms"],
          "lax_local_over_lcnet": ll["median_ms"] / lc["median_ms"],
          "lcnet_over_shared_conv": lc["median_ms"] / conv["median_ms"],
          "lcnet_setting": lc["setting"], "lcnet_compile_s": lc["compile_s"],
          "lcnet_memory_MiB": lc["memory_bytes"]["total"] / 2 ** 20,
          "lax_local_memory_MiB": ll["memory_bytes"]["total"] / 2 ** 20,
          "bw_roofline_ms": traffic["minimal"] / (bw_gbps * 1e9) * 1e3,
          "bw_roofline_with_patches_ms": traffic["with_patches"] / (bw_gbps * 1e9) * 1e3}


def markdown(shapes, bw_gbps):
  fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
  lines = [f"copy bandwidth (numpy, read+write): {bw_gbps:.1f} GB/s", "",
           "| shape | candidate | setting | median ms | GFLOP/s | x GEMM rate | compile s | peak MiB "
           "| x BW roofline |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
  for sh in shapes:
    d = sh["dims"]
    label = f"{sh['name']} (N{d['N']} {d['H']}x{d['W']}x{d['C']} k{d['k']} s{d['stride']} F{d['F']})"
    for r in sorted(sh["rows"], key=lambda r: (r["candidate"].startswith("lcnet."), r["candidate"])):
      mem = r["memory_bytes"] and r["memory_bytes"]["total"] / 2 ** 20
      lines.append(f"| {label} | {r['candidate']} | {r['setting']} | {r['median_ms']:.2f} | "
                   f"{r['gflops']:.2f} | {r['frac_gemm']:.3f} | {fmt(r['compile_s'], '.2f')} | "
                   f"{fmt(mem, '.1f')} | {fmt(r.get('frac_bw_roofline'), '.3f')} |")
  lines += ["", "| shape | default: lax_local / lcnet | default: lcnet / shared conv | tuned: "
            "lax_local / lcnet | tuned: lcnet / shared conv | lcnet's best setting | lcnet compile s | "
            "lcnet MiB | lax_local MiB | BW roofline ms (no patches / patches) |",
            "|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
  for sh in shapes:
    q = sh["ratios"]
    lines.append(f"| {sh['name']} | {q['default_lax_local_over_lcnet']:.1f}x | "
                 f"{q['default_lcnet_over_shared_conv']:.2f}x | "
                 f"{q['lax_local_over_lcnet']:.1f}x | {q['lcnet_over_shared_conv']:.2f}x | "
                 f"{q['lcnet_setting']} | {q['lcnet_compile_s']:.2f} | {q['lcnet_memory_MiB']:.1f} | "
                 f"{q['lax_local_memory_MiB']:.1f} | {q['bw_roofline_ms']:.1f} / "
                 f"{q['bw_roofline_with_patches_ms']:.1f} |")
  return "\n".join(lines)


def check_agreement(dims):
  """The candidates compute the same layer (checked once, at a small shape)."""
  n, h, w_in, c, k, s, f = dims
  p = make_problem(*dims)
  y = ops.local_filter(p["x"], p["w"], (s, s))
  y_lax = lax.conv_general_dilated_local(p["x"], p["w_lax"], (s, s), "VALID", (k, k), dimension_numbers=DN)
  np.testing.assert_allclose(y, y_lax, rtol=1e-4, atol=1e-4)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="BENCHMARKS.local_layer.json")
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
  ap.add_argument("--no-torch", action="store_true")
  args = ap.parse_args()
  check_agreement(SHAPES["small_32"])
  bw, bw_fresh = copy_bandwidth_gbps(), copy_bandwidth_gbps(fresh=True)
  shapes = []
  for name in args.shapes:
    print(f"benchmarking {name} ...", flush=True)
    shapes.append(bench_shape(name, SHAPES[name], args.reps, not args.no_torch))
  bw = max(bw, copy_bandwidth_gbps())  # sampled before and after; the roofline takes the best
  bw_fresh = max(bw_fresh, copy_bandwidth_gbps(fresh=True))
  for sh in shapes:
    sh["ratios"] = summarise(sh, bw)
  cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True,
              text=True).stdout.splitlines() if l.startswith("Model name")), platform.processor())
  result = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "machine": {"cpu": cpu, "nproc": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
                        "jax": jax.__version__},
            "copy_bandwidth_GBps": bw, "fresh_buffer_copy_bandwidth_GBps": bw_fresh,
            "memory_measure": "memory_analysis argument+output+temp bytes",
            "traffic_model": traffic_model.__doc__, "shapes": shapes}
  table = markdown(shapes, bw) + f"\n\ncopy into a fresh buffer (page faults included): {bw_fresh:.1f} GB/s"
  print(table)
  with open(args.out, "w") as fh:
    json.dump(result, fh, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
