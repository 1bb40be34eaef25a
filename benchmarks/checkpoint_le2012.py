"""The real le2012 TrainState (2.43e9 trainable parameters, SGD) born sharded on one mesh of 8
simulated devices, saved, and restored onto another mesh in a fresh process: time and peak RSS of
each side (the checkpoint's checksums are verified on restore).

    python -m benchmarks.checkpoint_le2012 --save-mesh 2,2,2 --restore-mesh 1,8,1 --out le2012_ckpt.json
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # before jax

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time

from benchmarks.checkpoint import du, evict, nbytes
from benchmarks.common import GiB, peak_rss, write_result


def _cfg(mesh: str):
  from lcnet import model
  from lcnet.config import MeshConfig
  return model.preset("le2012").replace(mesh=MeshConfig(*(int(v) for v in mesh.split(","))))


def save(workdir: str, mesh: str) -> dict:
  import jax

  from lcnet import checkpoint, train
  cfg = _cfg(mesh)
  t = time.perf_counter()
  state = jax.block_until_ready(train.init_state(cfg))
  out = {"mesh": mesh, "state_bytes": nbytes(state), "init_s": time.perf_counter() - t,
         "rss_after_init_GiB": peak_rss(), "rss_now_GiB": peak_rss("VmRSS")}
  print(json.dumps(out), file=sys.stderr, flush=True)
  with checkpoint.Checkpointer(workdir, cfg, handle_signals=False) as ckpt:
    t = time.perf_counter()
    ckpt.save(0, state, force=True)
    out["save_blocked_s"] = time.perf_counter() - t
    ckpt.wait()
    out["save_s"] = time.perf_counter() - t
  out.update(save_GiBps=out["state_bytes"] / GiB / out["save_s"], peak_rss_GiB=peak_rss(),
             on_disk_bytes=du(workdir))
  return out


def restore(workdir: str, mesh: str) -> dict:
  import jax

  from lcnet import checkpoint, train
  cfg = _cfg(mesh)
  evict(workdir)
  t = time.perf_counter()
  with checkpoint.Checkpointer(workdir, cfg, handle_signals=False, read_only=True) as ckpt:
    state = jax.block_until_ready(ckpt.restore(train.abstract_state(cfg)))
  s = time.perf_counter() - t
  w = state.params["layer2"]["encoder"]["kernel"]
  return {"mesh": mesh, "restore_s": s, "state_bytes": nbytes(state),
          "restore_GiBps": nbytes(state) / GiB / s, "peak_rss_GiB": peak_rss(),
          "layer2_kernel": [list(w.shape), str(w.sharding.spec)], "step": int(state.step)}


def main():
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--save-mesh", default="2,2,2")
  ap.add_argument("--restore-mesh", default="1,8,1")
  ap.add_argument("--dir", default=tempfile.gettempdir())
  ap.add_argument("--out", default=None)
  ap.add_argument("--role", nargs=2, default=None, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.role:
    role, workdir = args.role
    out = (save(workdir, args.save_mesh) if role == "save"
           else restore(workdir, args.restore_mesh))
    print(json.dumps(out))
    return
  tmp = tempfile.mkdtemp(prefix="lcnet_le2012_ckpt_", dir=args.dir)
  res = {"command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
  try:
    for role in ("save", "restore"):  # each in its own process: its own peak RSS
      p = subprocess.run([sys.executable, "-m", "benchmarks.checkpoint_le2012", "--save-mesh",
                          args.save_mesh, "--restore-mesh", args.restore_mesh, "--role", role,
                          tmp], capture_output=True, text=True)
      if p.returncode:
        raise RuntimeError(f"{role} failed ({p.returncode}):\n{p.stderr[-3000:]}")
      res[role] = json.loads(p.stdout.strip().splitlines()[-1])
      print(json.dumps(res[role]), flush=True)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  write_result(res, args.out)


if __name__ == "__main__":
  main()
