"""Checkpoint throughput of a >= 2 GiB sharded TrainState against the disk's own sequential
bandwidth (`dd` with fsync), measured in the same run and the same directory.

    .venv/bin/python -m benchmarks.checkpoint --image 88 --out BENCHMARKS.checkpoint.json

The state: le2012 layers (rf 18, 8 maps, 3 layers) on `--image`^2 x 3 inputs, with adam moments,
on a `--mesh` of simulated CPU devices as canvases (88 -> 2.4 GiB). For each compression setting:
the save (time blocked in `save`, the copy off the devices, then the time until committed); a
synthetic memory-bound step (x * (1 - 1e-6) over the whole state, donated) timed idle and while
the save writes; then, in a fresh process (its own peak RSS), a restore onto `--restore-mesh`
(another canvas) with checksum verification. Page cache: the dd file and every checkpoint file
are fsynced and evicted (posix_fadvise DONTNEED) before being read back, so reads hit the disk.
Everything is written under a temporary directory in `--dir` and deleted at the end.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # before jax

import argparse
import json
import math
import shutil
import statistics
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from benchmarks.common import GiB, peak_rss, write_result
from lcnet import checkpoint, train
from lcnet.config import Config, LayerConfig, ModelConfig, geometry


def config(image: int) -> Config:
  return Config(name=f"le2012_{image}", model=ModelConfig(image_size=(image, image), channels=3,
                                                          layers=(LayerConfig(),) * 3))


def mesh_of(shape: tuple[int, int, int]):
  return jax.make_mesh(shape, ("data", "rows", "cols"), axis_types=(AxisType.Auto,) * 3,
                       devices=jax.devices()[:math.prod(shape)])


def abstract_state(cfg: Config, mesh) -> train.TrainState:
  """TrainState shapes on `mesh`: kernels (and adam moments) as canvases, sharded rows x cols."""
  r, q = mesh.shape["rows"], mesh.shape["cols"]
  kern = NamedSharding(mesh, P("rows", "cols"))
  rep = NamedSharding(mesh, P())
  params = {}
  for i, g in enumerate(geometry(cfg.model)):
    ho, wo = (-(-g.out_hw[0] // r) * r, -(-g.out_hw[1] // q) * q)
    sds = jax.ShapeDtypeStruct((ho, wo, *g.encoder_shape[2:]), jnp.float32, sharding=kern)
    params[f"layer{i + 1}"] = {"encoder": {"kernel": sds}, "decoder": {"kernel": sds}}
  count = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
  opt = (optax.ScaleByAdamState(count=count, mu=params, nu=params), optax.EmptyState())
  key = jax.eval_shape(lambda: jax.random.key(0))
  return train.TrainState(step=count, params=params, opt_state=opt,
                          rng=jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep))


def make_state(cfg: Config, mesh) -> train.TrainState:
  """Random values, born sharded (valid region only: the canvas padding stays zero)."""
  target = abstract_state(cfg, mesh)
  valid = {f"layer{i + 1}": g.encoder_shape for i, g in enumerate(geometry(cfg.model))}

  def build():
    def kernel(path, x):
      layer = next(k.key for k in path if getattr(k, "key", "").startswith("layer"))
      v = valid[layer]
      seed = abs(hash(jax.tree_util.keystr(path))) % 2**31
      w = jax.random.normal(jax.random.key(seed), v, jnp.float32)
      return jnp.pad(w, [(0, a - b) for a, b in zip(x.shape, v)])
    kernels = jax.tree_util.tree_map_with_path(kernel, (target.params, target.opt_state[0].mu,
                                                        target.opt_state[0].nu))
    opt = (optax.ScaleByAdamState(count=jnp.int32(7), mu=kernels[1], nu=kernels[2]),
           optax.EmptyState())
    return train.TrainState(step=jnp.int32(7), params=kernels[0], opt_state=opt,
                            rng=jax.random.key(0))
  shardings = jax.tree.map(lambda x: x.sharding, target)
  return jax.block_until_ready(jax.jit(build, out_shardings=shardings)())


def nbytes(tree) -> int:
  return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree)
             if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))


def evict(path: str):
  """Drop the files under `path` from the page cache (they are fsynced first)."""
  files = [path] if os.path.isfile(path) else [
      os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
  for f in files:
    fd = os.open(f, os.O_RDONLY)
    try:
      os.fsync(fd)
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def du(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def dd(tmp: str, size: int) -> dict:
  """Sequential write (fsync before dd exits) and read (page cache evicted) of `size` bytes."""
  f, bs = os.path.join(tmp, "dd.bin"), 64 * 2**20
  count = -(-size // bs)
  t = time.perf_counter()
  subprocess.run(["dd", "if=/dev/zero", f"of={f}", f"bs={bs}", f"count={count}", "conv=fsync"],
                 check=True, capture_output=True)
  write = time.perf_counter() - t
  evict(f)
  t = time.perf_counter()
  subprocess.run(["dd", f"if={f}", "of=/dev/null", f"bs={bs}"], check=True, capture_output=True)
  read = time.perf_counter() - t
  os.remove(f)
  return {"bytes": count * bs, "write_s": write, "read_s": read,
          "write_GiBps": count * bs / GiB / write, "read_GiBps": count * bs / GiB / read}


def step_times(step, state, n: int, until=None):
  """Run the synthetic step n times (or while `until()`); per-step seconds and the state."""
  times = []
  while (until() if until else len(times) < n):
    t = time.perf_counter()
    state = jax.block_until_ready(step(state))
    times.append(time.perf_counter() - t)
  return times, state


def timed_save(ckpt, step: int, state, during=None) -> dict:
  """Seconds blocked in `save` (checksums + copy off the devices) and until committed."""
  t = time.perf_counter()
  ckpt.save(step, state, force=True)
  out = {"blocked_s": time.perf_counter() - t}
  if during:
    out.update(during())
  ckpt.wait()
  out["total_s"] = time.perf_counter() - t
  return out


def restore_timed(cfg, mesh, workdir: str) -> float:
  """Seconds to restore the latest checkpoint onto `mesh` (checksums verified), cache evicted."""
  target = abstract_state(cfg, mesh)
  evict(workdir)
  t = time.perf_counter()
  with checkpoint.Checkpointer(workdir, cfg, handle_signals=False, read_only=True) as ckpt:
    jax.block_until_ready(ckpt.restore(target))
  return time.perf_counter() - t


def save_run(cfg, mesh, restore_mesh, tmp: str, compress: bool, reps: int) -> dict:
  """Saves (cold, then `reps` warm ones each next to a dd run and a restore), then a save while
  a synthetic step runs."""
  workdir = os.path.join(tmp, f"run_{'z' if compress else 'raw'}")
  state = make_state(cfg, mesh)
  size = nbytes(state)
  decay = lambda t: jax.tree.map(lambda x: x * (1 - 1e-6) if x.dtype == jnp.float32 else x, t)
  step = jax.jit(lambda s: s.replace(params=decay(s.params), opt_state=decay(s.opt_state)),
                 donate_argnums=0)
  _, state = step_times(step, state, 1)  # compile (it donates: keep using the returned state)
  idle, state = step_times(step, state, 5)
  ckpt = checkpoint.Checkpointer(workdir, cfg, handle_signals=False, compress=compress, keep=None)
  out = {"state_bytes": size, "compress": compress, "cold_save": timed_save(ckpt, 1, state),
         "reps": []}
  for i in range(reps):
    rep = {"dd": dd(tmp, size), "save": timed_save(ckpt, i + 2, state)}
    rep["restore_s"] = restore_timed(cfg, restore_mesh, workdir)
    rep["save_GiBps"] = size / GiB / rep["save"]["total_s"]
    rep["restore_GiBps"] = size / GiB / rep["restore_s"]
    out["reps"].append(rep)
    print(json.dumps(rep), flush=True)
  busy = []

  def steps():  # the training loop goes on while the save writes
    nonlocal state
    busy[:], state = step_times(step, state, 0, until=ckpt._mgr.is_saving_in_progress)
    return {}
  out["while_training"] = timed_save(ckpt, reps + 2, state, during=steps)
  ckpt.close()
  med = lambda k, sub=None: statistics.median(r[k] if sub is None else r[k][sub] for r in out["reps"])
  out.update(on_disk_bytes=du(os.path.join(workdir, checkpoint.SUBDIR, "2")),
             step_idle_s=statistics.median(idle),
             step_while_saving_s=statistics.median(busy) if busy else None,
             steps_while_saving=len(busy), peak_rss_GiB=peak_rss(),
             median_save_GiBps=med("save_GiBps"), median_dd_write_GiBps=med("dd", "write_GiBps"),
             median_restore_GiBps=med("restore_GiBps"), median_dd_read_GiBps=med("dd", "read_GiBps"),
             median_save_blocked_s=statistics.median(r["save"]["blocked_s"] for r in out["reps"]))
  return out, workdir


def restore_run(cfg, mesh, workdir: str) -> dict:
  """In its own process: restore onto `mesh` (checksums verified) twice, page cache evicted
  before each: cold (a restarted run: includes compiling the checksums, starting tensorstore)
  and warm. Time and peak RSS."""
  target = abstract_state(cfg, mesh)
  out = {"restore_mesh": dict(mesh.shape), "rss_before_GiB": peak_rss()}
  for name in ("cold", "warm"):
    evict(workdir)
    t = time.perf_counter()
    with checkpoint.Checkpointer(workdir, cfg, handle_signals=False, read_only=True) as ckpt:
      state = ckpt.restore(target)
    out[f"{name}_s"] = time.perf_counter() - t
    out[f"{name}_GiBps"] = nbytes(state) / GiB / out[f"{name}_s"]
    out[f"{name}_peak_rss_GiB"] = peak_rss()
    del state
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--image", type=int, default=88)
  ap.add_argument("--mesh", default="2,2,2")
  ap.add_argument("--restore-mesh", default="1,8,1")
  ap.add_argument("--dir", default=tempfile.gettempdir())
  ap.add_argument("--compress", default="off,on")
  ap.add_argument("--reps", type=int, default=3)
  ap.add_argument("--out", default=None)
  ap.add_argument("--restore-only", default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  cfg = config(args.image)
  if args.restore_only:
    mesh = mesh_of(tuple(int(v) for v in args.restore_mesh.split(",")))
    print(json.dumps(restore_run(cfg, mesh, args.restore_only)), flush=True)
    return
  mesh = mesh_of(tuple(int(v) for v in args.mesh.split(",")))
  tmp = tempfile.mkdtemp(prefix="lcnet_ckpt_bench_", dir=args.dir)
  results = {"image": args.image, "mesh": args.mesh, "devices": jax.device_count(),
             "platform": jax.devices()[0].platform, "cpus": os.cpu_count(), "runs": []}
  try:
    size = nbytes(abstract_state(cfg, mesh))
    print(f"state: {size / GiB:.2f} GiB on mesh {args.mesh}", flush=True)
    restore_mesh = mesh_of(tuple(int(v) for v in args.restore_mesh.split(",")))
    for compress in (c == "on" for c in args.compress.split(",")):
      run, workdir = save_run(cfg, mesh, restore_mesh, tmp, compress, args.reps)
      out = subprocess.run([sys.executable, "-m", "benchmarks.checkpoint", "--image", str(args.image),
                            "--restore-mesh", args.restore_mesh, "--restore-only", workdir],
                           capture_output=True, text=True)
      if out.returncode:
        raise RuntimeError(f"restore failed:\n{out.stderr[-5000:]}")
      run.update(fresh_process_restore=json.loads(out.stdout.strip().splitlines()[-1]))
      shutil.rmtree(workdir)
      results["runs"].append(run)
      print(json.dumps({k: v for k, v in run.items() if k != "reps"}), flush=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  write_result(results, args.out)


if __name__ == "__main__":
  main()
