"""Everything lcnet must show on a GPU, in one run that fits a short loan of one (<= 8 minutes on
one H200), written section by section to DIR/gpu_suite.json (a section that fails is recorded
with its error and the run goes on; items past their section's deadline are skipped and say so):

    python -m benchmarks.gpu_suite --out DIR     # ~8 min: every section, at the default tiles

The run is planned before it starts (`plan`: seconds per item measured on an H200, `COST_S`) and
each section stops starting items where the planned time of the sections after it begins
(`deadlines`), so a slow section cannot starve the others; the plan is in the JSON.

The Pallas tiles, swept on their own loan (24 layer settings, then the step at batch 64 at the
default and the fastest tiles, those checked first against XLA and NumPy; ~8 min):

    python -m benchmarks.gpu_suite --out DIR --sections local_layer train_step \
        --layers layer1 layer2 layer1_b64 --cols 2 4 8 --warps 1 4 --batch-tiles 16 64 \
        --dtypes float32 --batches 64 --budget-s 540

1. `correct`: the Pallas kernels (Triton, IEEE float32 products) against the XLA formulation at
   the Le-2012 first layer, and against NumPy loops on an odd shape (stride 2, 20 maps): forward,
   input gradient, weight gradient.
2. `local_layer`: fwd+bwd (value_and_grad of sum(y * g) w.r.t. x and w) of the Le-2012 layer 1
   at batch 16 (`--layers`: also layer 2, and layer 1 at batch 64), XLA (batched matmuls) vs
   Pallas, float32 and bfloat16 (Pallas also with other tiles if asked: warps, columns and
   examples per program, `--warps --cols --batch-tiles`), medians; against the layer's own
   bounds: its unavoidable bytes (weights read twice and written once, activations) at the
   measured copy bandwidth, and its FLOP at the fp32 peak.
3. `train_step`: the le2012 joint train step (SGD), images/s at batch 16 and 64, float32 and
   bfloat16, XLA (batched matmuls) vs Pallas at its default tiles (and at the fastest tiles of
   section 2, if it swept others) (`benchmarks.accelerator.bench`), against the fp32 bound.
4. `fit`: `train.fit`'s images/s (crops cut on the host from 64 random 256x256 frames, metrics
   fetched a step late) against the bare step's, same config.
5. `state_11b`: the coates2013_11b network (1.112e10 parameters) with SGD on one GPU: allocated,
   three steps timed, saved with Orbax and restored into an abstract target, checksums verified.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

import numpy as np

from benchmarks import accelerator

GiB = 2**30
LE2012_LAYERS = {"layer1": (16, 200, 200, 3, 18, 1, 8), "layer1_b64": (64, 200, 200, 3, 18, 1, 8),
                 "layer2": (16, 179, 179, 8, 18, 1, 8)}  # N, H, W, C, k, stride, maps


def _median_s(fn, *args, reps: int = 7):
  import jax
  jax.block_until_ready(fn(*args))  # compile and warm up
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _layer_problem(n, h, w_in, c, k, s, f, seed=0):
  import jax

  from lcnet import ops
  ho, wo = ops.output_size(h, k, s), ops.output_size(w_in, k, s)
  kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (n, h, w_in, c))
  w = jax.random.normal(kw, (ho, wo, k, k, c, f)) / k
  g = jax.random.normal(kg, (n, ho, wo, f))
  return x, w, g, (s, s)


def _tunings():
  from lcnet import ops
  return {"xla": ops.LocalTuning(4 << 30, "einsum"), "pallas": ops.LocalTuning(1, "pallas")}


def correct(tiles_list=None) -> dict:
  """The kernels at each of `tiles_list` (default: the default tiles) against XLA at the Le-2012
  first layer and against NumPy on an odd shape (IEEE float32 products)."""
  import jax

  from lcnet import ops, pallas_local
  tiles_list = tiles_list or [ops.DEFAULT_TUNING["gpu"].pallas]
  out = {}
  with jax.default_matmul_precision("highest"):
    x, w, g, s = _layer_problem(*LE2012_LAYERS["layer1"])
    xla = _tunings()["xla"]
    ref = {"forward": ops.local_filter(x, w, s, tuning=xla),
           "input_grad": ops.local_filter_transpose(g, w, x.shape[1:3], s, tuning=xla),
           "weight_grad": jax.grad(lambda w: (ops.local_filter(x, w, s, tuning=xla) * g).sum())(w)}
    # an odd shape against NumPy (stride 2, stride not dividing the kernel, 20 maps, 37 examples)
    rng = np.random.default_rng(0)
    n, h, wd, c, k, st, f = 37, 15, 13, 8, 5, 2, 20
    ho, wo = ops.output_size(h, k, st), ops.output_size(wd, k, st)
    xo = rng.standard_normal((n, h, wd, c)).astype(np.float32)
    wo_ = rng.standard_normal((ho, wo, k, k, c, f)).astype(np.float32)
    y = np.zeros((n, ho, wo, f))
    for i in range(ho):
      for j in range(wo):
        y[:, i, j] = np.einsum("nabc,abcf->nf", xo[:, i * st:i * st + k, j * st:j * st + k], wo_[i, j])
    for tiles in tiles_list:
      name = f"{tiles.cols}cols_{tiles.warps}warps_{tiles.batch}batch"
      got = {"forward": pallas_local.forward(x, w, s, tiles),
             "input_grad": pallas_local.input_grad(g, w, x.shape, s, tiles),
             "weight_grad": pallas_local.weight_grad(x, g, w.shape, s, tiles)}
      for p in ref:
        a, b = np.asarray(got[p], np.float64), np.asarray(ref[p], np.float64)
        out[f"le2012_layer1_{p}_{name}_max_rel_err"] = float(np.abs(a - b).max() / np.abs(b).max())
      odd = np.asarray(pallas_local.forward(xo, wo_, (st, st), tiles), np.float64)
      out[f"odd_forward_{name}_max_rel_err_vs_numpy"] = float(np.abs(odd - y).max() / np.abs(y).max())
  out["ok"] = all(v < 1e-4 for k, v in out.items() if "_err" in k)
  return out


COPY_ELEMENTS = GiB  # float32: a 4 GiB array copied (`a + 1`), large enough to reach HBM's rate


def copy_gbps() -> float:
  import jax
  import jax.numpy as jnp
  a = jnp.ones((COPY_ELEMENTS,), jnp.float32)
  t = _median_s(jax.jit(lambda a: a + 1.0), a, reps=5)
  return 2 * a.nbytes / t / 1e9


def _passes(tuning, strides, per_pass: bool) -> dict:
  """name -> f(x, w, g): fwd+bwd (the loss sum(y g) and both gradients), and each pass alone."""
  import jax
  import jax.numpy as jnp

  from lcnet import ops

  def lf(x, w):
    return ops.local_filter(x, w, strides, tuning=tuning)

  out = {"fwd+bwd": jax.value_and_grad(lambda x, w, g: jnp.sum(lf(x, w) * g), (0, 1))}
  if per_pass:
    out.update({"fwd": lambda x, w, g: lf(x, w),
                "input_grad": lambda x, w, g: jax.vjp(lambda x: lf(x, w), x)[1](g),
                "weight_grad": lambda x, w, g: jax.vjp(lambda w: lf(x, w), w)[1](g)})
  return out


def local_layer(peak_tflops: float, bandwidth_gbps: float, warps=(1, 4), dtypes=("float32",),
                layers=tuple(LE2012_LAYERS), per_pass: bool = False, cols=(1, 2, 4),
                batch_tiles=(16, 64), deadline: float = float("inf")) -> dict:
  """fwd+bwd per layer, implementation and compute dtype; Pallas (float32) also with other tiles
  than its default (`ops.PallasTiles`): every pair of columns and warps per program where the
  batch fits one batch block, other batch blocks where it does not; with `per_pass`, each pass
  alone too. Settings not started by `deadline` are recorded as skipped, so that the step
  section keeps its time."""
  import jax
  import jax.numpy as jnp

  rows = []
  for name in layers:
    shape = LE2012_LAYERS[name]
    x, w, g, s = _layer_problem(*shape)
    flop = 6 * x.shape[0] * w.size
    for tname, tiles, dtype in _layer_settings(shape[0], dtypes, warps, cols, batch_tiles):
      tuning = dataclasses.replace(_tunings()[tname], pallas=tiles)
      xd, wd, gd = (a.astype(dtype) for a in (x, w, g))
      min_bytes = jnp.dtype(dtype).itemsize * (3 * w.size + 2 * x.size + 2 * g.size)
      about = {"layer": name, "shape": shape, "impl": tname, "dtype": dtype,
               **(_tile_fields(tiles) if tname == "pallas" else {})}
      for pname, fn in _passes(tuning, s, per_pass).items():
        if time.time() > deadline:
          rows.append({**about, "pass": pname, "skipped": "time budget"})
          continue
        try:
          t = _median_s(jax.jit(fn), xd, wd, gd)
          share = 1 if pname == "fwd+bwd" else 1 / 3
          rows.append({**about, "pass": pname, "median_ms": 1e3 * t,
                       "tflops": share * flop / t / 1e12,
                       "gbps_of_min_bytes": share * min_bytes / t / 1e9,
                       "share_of_memory_bound": share * min_bytes / bandwidth_gbps / 1e9 / t,
                       "share_of_fp32_peak": share * flop / (peak_tflops * 1e12) / t})
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: recorded
          rows.append({**about, "pass": pname, "error": f"{type(e).__name__}: {e}"[:400]})
        print(json.dumps(rows[-1]), flush=True)
    del x, w, g
  return {"rows": rows, "best_tiles": _tile_fields(_best_tiles(rows))}


def _layer_settings(batch: int, dtypes, warps, cols, batch_tiles) -> list:
  """(implementation, tiles, dtype) of one layer at `batch`: XLA and Pallas at the default tiles in
  each dtype; then, in float32, every other pair of columns and warps where the batch fits one
  batch block, every other batch block where it does not."""
  from lcnet import ops
  base = ops.DEFAULT_TUNING["gpu"].pallas
  out = [(t, base, d) for d in dtypes for t in _tunings()]
  if batch <= base.batch:
    out += [("pallas", dataclasses.replace(base, cols=c, warps=v), "float32")
            for c in sorted({base.cols, *cols}) for v in sorted({base.warps, *warps})
            if (c, v) != (base.cols, base.warps)]
  else:
    out += [("pallas", dataclasses.replace(base, batch=b), "float32") for b in sorted(batch_tiles)
            if b != base.batch]
  return out


def _tile_fields(tiles) -> dict:
  return {"cols": tiles.cols, "num_warps": tiles.warps, "batch_tile": tiles.batch}


def _pallas_ms(layer_rows) -> dict:
  """{(layer, (cols, warps, batch)): ms} of the Pallas fwd+bwd rows timed in float32."""
  return {(r["layer"], (r["cols"], r["num_warps"], r["batch_tile"])): r["median_ms"]
          for r in layer_rows if r.get("impl") == "pallas" and r.get("pass") == "fwd+bwd"
          and r.get("dtype") == "float32" and "median_ms" in r}


def _best_tiles(layer_rows):
  """The fastest tiles relative to the default's on the same layers (mean ratio; ties keep the
  default), as swept: columns and warps jointly at the default batch block, then the batch
  block at the default columns and warps. The default where nothing else was timed."""
  import statistics

  from lcnet import ops
  base = ops.DEFAULT_TUNING["gpu"].pallas
  ref = (base.cols, base.warps, base.batch)
  times = _pallas_ms(layer_rows)

  def fastest(key, keep):
    """The value of key(tiles) with the least mean ratio over the layers where others were
    timed, among the rows with keep(tiles) and a default row on their layer."""
    ratios = {}
    for (layer, tiles), ms in times.items():
      if keep(tiles) and (layer, ref) in times:
        ratios.setdefault(key(tiles), {})[layer] = ms / times[(layer, ref)]
    swept = {layer for v, by in ratios.items() if v != key(ref) for layer in by}
    scores = {v: statistics.mean(by[layer] for layer in swept) for v, by in ratios.items()
              if swept and swept <= by.keys()}
    return min(scores, key=lambda v: (scores[v], v != key(ref))) if scores else key(ref)

  cols, warps = fastest(lambda t: t[:2], lambda t: t[2] == ref[2])
  batch = fastest(lambda t: t[2], lambda t: t[:2] == ref[:2])
  return ops.PallasTiles(cols=cols, warps=warps, batch=batch)


def _pallas_slowdown(layer_rows) -> float | None:
  """The fastest Pallas tiles' fwd+bwd over XLA's at layer 1 in float32; None if unmeasured."""
  p = [ms for (layer, _), ms in _pallas_ms(layer_rows).items() if layer == "layer1"]
  x = [r["median_ms"] for r in layer_rows if r.get("impl") == "xla" and r.get("layer") == "layer1"
       and r.get("pass") == "fwd+bwd" and r.get("dtype") == "float32" and "median_ms" in r]
  return min(p) / x[0] if p and x else None


def train_step(peak_tflops: float, batches, deadline: float, layer_rows, dtypes=("float32",)) -> dict:
  """XLA and Pallas steps; Pallas also with the tiles the local_layer section (`layer_rows`)
  found fastest, if not the default and once checked against XLA (`correct`). Pallas is skipped
  where even its fastest tiles' layer was > 4x slower than XLA's (not worth the time)."""
  from lcnet import ops
  default, best = ops.DEFAULT_TUNING["gpu"].pallas, _best_tiles(layer_rows)
  out = {"rows": []}
  variants = [("einsum", None), ("pallas", default)]
  if best != default:
    out["best_tiles_correct"] = correct([best])
    variants += [("pallas", best)] if out["best_tiles_correct"]["ok"] else []
  slowdown = _pallas_slowdown(layer_rows)
  rows = out["rows"]
  for batch, dtype, (contract, tiles) in itertools.product(batches, dtypes, variants):
    about = {"batch": batch, "dtype": dtype, "contract": contract,
             **(_tile_fields(tiles) if tiles else {})}
    slow = contract == "pallas" and slowdown is not None and slowdown > 4
    if time.time() > deadline or slow:
      rows.append({**about, "skipped": f"Pallas layer {slowdown:.1f}x slower" if slow
                   else "time budget"})
      continue
    try:
      r = accelerator.bench("le2012", batch, "default", 3, 3, 1, peak_tflops, 0, contract,
                            compute_dtype=dtype,
                            pallas=(tiles.cols, tiles.warps, tiles.batch) if tiles else (0, 0, 0))
      r.pop("all_s_per_step")
      rows.append({**r, **about} if tiles else {k: v for k, v in r.items()
                                                 if k not in ("cols", "num_warps", "batch_tile")})
    except Exception as e:  # noqa: BLE001
      rows.append({**about, "error": f"{type(e).__name__}: {e}"[:400]})
    print(json.dumps(rows[-1]), flush=True)
  return out


def fit_vs_step(step_rows, steps: int = 24) -> dict:
  from lcnet import data, model, train
  batch = 16
  cfg = model.preset("le2012").replace(train=dict(batch_size=batch, steps=steps, log_every=1,
                                                  mode="joint"))
  rng = np.random.default_rng(0)
  crop, c = cfg.model.image_size[0], cfg.model.channels
  frames = [rng.integers(0, 256, (crop + 56, crop + 56, c), np.uint8) for _ in range(64)]
  src = data.CropSource(frames, crop=crop, batch_size=batch)
  stamps, waits = {}, {}

  def log(step, scalars):
    stamps.setdefault(step, time.perf_counter())
    waits[step] = scalars["input_wait"]  # the share of time fit waited for its batch (lcnet.loader)
  res = train.fit(cfg, src, log=log)
  logged = sorted(stamps)
  first, last = logged[len(logged) // 3], logged[-1]
  ips = batch * (last - first) / (stamps[last] - stamps[first])
  ran = model.resolved(cfg).model.local_op.contract
  bare = next((r["images_per_s"] for r in step_rows if r.get("batch") == batch
               and r.get("contract") == ran and "images_per_s" in r), None)
  late = [waits[s] for s in logged if s >= first]
  return {"contract": ran, "fit_images_per_s": ips, "bare_step_images_per_s": bare,
          "fit_over_step": ips / bare if bare else None, "steps_timed": last - first,
          "input_wait_median": float(np.median(late)), "input_wait_total_s": res.input_wait_s}


def state_11b(deadline: float) -> dict:
  import jax

  from lcnet import checkpoint, model, train
  cfg = model.preset("coates2013_11b").replace(train=dict(optimizer="sgd", batch_size=4,
                                                           mode="joint"))
  out = {"params": model.count_params(cfg)}
  t = time.perf_counter()
  state = jax.block_until_ready(train.init_state(cfg))
  out["init_s"] = time.perf_counter() - t
  out["state_gib"] = sum(a.nbytes for a in jax.tree.leaves(state)) / GiB
  step = train.make_train_step(cfg)
  rng = np.random.default_rng(0)
  x = jax.device_put(rng.standard_normal((4, *cfg.model.image_size, cfg.model.channels),
                                         np.float32))
  t = time.perf_counter()
  state, metrics = step(state, x)
  jax.block_until_ready(metrics)
  out["first_step_s"] = time.perf_counter() - t
  times = []
  for _ in range(3):
    t = time.perf_counter()
    state, metrics = step(state, x)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  out.update(median_step_s=statistics.median(times), loss=float(metrics["total"]),
             peak_device_gib=(jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0) / GiB)
  print(json.dumps(out), flush=True)
  if time.time() > deadline:
    out["checkpoint"] = "skipped: time budget"
    return out
  del step
  with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as workdir:
    t = time.perf_counter()
    with checkpoint.Checkpointer(workdir, cfg, handle_signals=False) as ckpt:
      ckpt.save(int(state.step), state, force=True)
      ckpt.wait()
    out["save_s"] = time.perf_counter() - t
    want = {k: float(np.asarray(v["encoder"]["kernel"][0, 0]).sum()) for k, v in state.params.items()}
    del state
    t = time.perf_counter()
    with checkpoint.Checkpointer(workdir, cfg, handle_signals=False, read_only=True) as ckpt:
      back = jax.block_until_ready(ckpt.restore(train.abstract_state(cfg)))
    out["restore_s"] = time.perf_counter() - t
    got = {k: float(np.asarray(v["encoder"]["kernel"][0, 0]).sum()) for k, v in back.params.items()}
    out["restored_equal"] = got == want and int(back.step) == 4
  return out


# Seconds per item on one H200, compile included, from the 2026-12-04 run of the current kernels
# (benchmarks/results/gpu_suite_h200_2026-12-04_run*.json): `correct` 104.7 s per tile set (53.2 s
# on 2026-11-30); a local_layer setting 7.5-11.8 s (142 s for 12, the copy-bandwidth test
# included); a train_step row 19.3-24.6 s (154.6 s for 8, 98.5 s for 4); fit 19.5 s; state_11b
# 88.8 s (124 s on 2026-11-30, when the Orbax save alone took 65 s; the last section, so an
# overrun ends the run later but starves nothing); start-up ~3 s, 10 s allowed.
COST_S = {"start": 10.0, "correct": 105.0, "layer_setting": 12.0, "step_row": 25.0, "fit": 20.0,
          "state_11b": 90.0}


def plan(args) -> dict:
  """The seconds each requested section should take on one H200 (`COST_S` x the items the
  arguments ask for), so that the run is sized before a loan is spent and each section's
  deadline keeps the later sections' time. A tile sweep may add a step variant and its check."""
  settings = sum(len(_layer_settings(LE2012_LAYERS[name][0], args.dtypes, args.warps, args.cols,
                                     args.batch_tiles)) for name in args.layers)
  swept = "local_layer" in args.sections and settings > 2 * len(args.layers) * len(args.dtypes)
  variants = 2 + swept  # XLA, Pallas at the default tiles (and at the fastest swept, if others)
  steps = len(args.batches) * len(args.step_dtypes or args.dtypes) * variants
  passes = 4 if args.per_pass else 1  # fwd+bwd, and each pass alone
  cost = {"correct": COST_S["correct"],
          "local_layer": COST_S["layer_setting"] * settings * passes,
          "train_step": COST_S["step_row"] * steps + COST_S["correct"] * swept,
          "fit": COST_S["fit"], "state_11b": COST_S["state_11b"]}
  return {name: cost[name] for name in args.sections}


def deadlines(start: float, budget_s: float, planned: dict) -> dict:
  """Per section (in run order), the time after which it starts nothing more. Where the plan
  fits the budget: the budget's end less the planned seconds of the sections after it, so a slow
  sweep cannot starve them (and time a section leaves over goes to the next). Where it does not:
  every section's planned seconds scaled down by one factor first, so that each still gets its
  share (a sweep whose fastest tiles the step section uses is cut short, never skipped whole)."""
  total = sum(planned.values())
  room = budget_s - COST_S["start"]
  scale = 1.0 if total <= room else max(room, 0.0) / total
  out, later = {}, total
  for name, s in planned.items():
    later -= s
    out[name] = start + budget_s - scale * later
  return out


def parse_args(argv=None):
  """The suite's arguments; bad tiles stop here, before anything runs."""
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True, help="directory for gpu_suite.json")
  ap.add_argument("--budget-s", type=float, default=480.0,
                  help="the whole run's seconds; each section stops starting items where the "
                       "planned time of the sections after it begins (`plan`, `deadlines`)")
  ap.add_argument("--layer-budget-s", type=float, default=None,
                  help="local_layer also stops starting settings this long after the start")
  ap.add_argument("--peak-tflops", type=float, default=67.0, help="fp32 peak, no tensor cores")
  ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
  ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                  help="compute dtypes of the local_layer and train_step sections")
  ap.add_argument("--layers", nargs="+", default=["layer1"], choices=list(LE2012_LAYERS))
  ap.add_argument("--per-pass", action="store_true", help="local_layer: each pass alone too")
  ap.add_argument("--warps", type=int, nargs="*", default=[],
                  help="local_layer: Pallas also with these warps per program (with each --cols)")
  ap.add_argument("--cols", type=int, nargs="*", default=[],
                  help="local_layer: Pallas also with these columns per program (float32, layers "
                       "whose batch fits one batch block)")
  ap.add_argument("--batch-tiles", type=int, nargs="*", default=[],
                  help="local_layer: Pallas also with these most examples per program (float32, "
                       "layers whose batch is larger); train_step also runs the fastest tiles")
  ap.add_argument("--step-dtypes", nargs="+", default=None,
                  help="train_step's compute dtypes (default: --dtypes)")
  ap.add_argument("--sections", nargs="+",
                  default=["correct", "local_layer", "train_step", "fit", "state_11b"])
  args = ap.parse_args(argv)
  from lcnet import config
  for name, flag, values in [("cols", "--cols", args.cols), ("warps", "--warps", args.warps),
                             ("batch", "--batch-tiles", args.batch_tiles)]:
    for v in values:
      if problem := config.pallas_tiles_problem(**{"cols": 1, "warps": 1, "batch": 16, name: v}):
        ap.error(f"{flag}: {problem}")
  return args


def main(argv=None):
  args = parse_args(argv)
  start = time.time()
  planned = plan(args)
  ends = deadlines(start, args.budget_s, planned)
  import jax
  dev = jax.devices()[0]
  res = {"command": " ".join(["python -m benchmarks.gpu_suite", *sys.argv[1:]]),
         "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "jax": jax.__version__,
         "device": getattr(dev, "device_kind", str(dev)), "platform": dev.platform,
         "planned_s": {**planned, "total": COST_S["start"] + sum(planned.values())}}
  if res["planned_s"]["total"] > args.budget_s:
    print(f"gpu_suite: the plan ({res['planned_s']['total']:.0f} s on an H200) exceeds --budget-s "
          f"{args.budget_s:.0f}: the later items of each section will be skipped", flush=True)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "gpu_suite.json")
  print(json.dumps(res), flush=True)
  runs = {"correct": correct,
          "local_layer": lambda: local_layer(args.peak_tflops, res.setdefault("copy_gbps", copy_gbps()),
                                             warps=args.warps, dtypes=args.dtypes,
                                             layers=args.layers, per_pass=args.per_pass,
                                             cols=args.cols, batch_tiles=args.batch_tiles,
                                             deadline=min(ends["local_layer"], start + (
                                                 args.layer_budget_s or float("inf")))),
          "train_step": lambda: train_step(args.peak_tflops, args.batches,
                                           ends["train_step"],
                                           res.get("local_layer", {}).get("rows", []),
                                           args.step_dtypes or args.dtypes),
          "fit": lambda: fit_vs_step(res.get("train_step", {}).get("rows", [])),
          "state_11b": lambda: state_11b(ends["state_11b"])}
  for name in args.sections:
    if time.time() > ends[name]:
      res[name] = {"skipped": f"time budget ({args.budget_s:.0f} s) spent"}
    else:
      t = time.time()
      try:
        res[name] = runs[name]()
      except Exception as e:  # noqa: BLE001 - recorded, and the next section runs
        res[name] = {"error": f"{type(e).__name__}: {e}"[:2000],
                     "traceback": traceback.format_exc()[-3000:]}
      res[name]["section_s"] = round(time.time() - t, 1)
      jax.clear_caches()
    print(json.dumps({name: res[name]})[:3000], flush=True)
    with open(path, "w") as f:
      json.dump(res, f, indent=2)
  res["total_s"] = round(time.time() - start, 1)
  with open(path, "w") as f:
    json.dump(res, f, indent=2)
  return res


if __name__ == "__main__":
  main()
