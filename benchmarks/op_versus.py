"""The local op of the working tree against the same op at another git revision, side by side.

    taskset -c 1 .venv/bin/python -m benchmarks.op_versus --rev HEAD --out /tmp/versus.json

`lcnet/ops.py` and `lcnet/patches.py` of `--rev` are copied into a temporary package (imports
rewritten), so both versions run in one process on one pinned core, compiled with lcnet's
options, interleaved round-robin; medians of `--reps`. Fwd+bwd as in `benchmarks.local_layer`
(loss sum(y * g), gradients of input and weights), plus the input-gradient phase alone, where
most changes to the patch transpose show. The machines here are shared and noisy: only a
ratio measured this way says whether a change to the op made it faster.
"""
from __future__ import annotations

import os

if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:  # before jax starts
  os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})

import argparse
import importlib
import statistics
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp

from benchmarks.common import interleaved_times, write_result
from benchmarks.local_layer import SHAPES, make_problem
from lcnet import compiled, ops

FILES = ("ops.py", "patches.py")


def ops_at(rev: str, where: str):
  """lcnet.ops as it was at git revision `rev`, imported as a package under `where`."""
  top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                       check=True).stdout.strip()
  name = "lcnet_at_" + "".join(ch if ch.isalnum() else "_" for ch in rev)
  os.makedirs(os.path.join(where, name))
  open(os.path.join(where, name, "__init__.py"), "w").close()
  for f in FILES:
    src = subprocess.run(["git", "-C", top, "show", f"{rev}:lcnet/{f}"], capture_output=True,
                         text=True, check=True).stdout
    with open(os.path.join(where, name, f), "w") as fh:
      fh.write(src.replace("from lcnet.patches", f"from {name}.patches"))
  sys.path.insert(0, where)
  return importlib.import_module(f"{name}.ops")


def compile_pair(m, p, s):
  """(fwd+bwd, input gradient alone) of module m's local_filter, compiled with lcnet's options."""
  lay = lambda x, w: m.local_filter(x, w, (s, s))
  loss = lambda x, w, g: jnp.sum(lay(x, w) * g)
  args = (p["x"], p["w"], p["g"])
  opts = compiled.options()
  both = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile(compiler_options=opts)
  igrad = jax.jit(jax.grad(loss, argnums=0)).lower(*args).compile(compiler_options=opts)
  dev = [jax.device_put(a) for a in args]
  return {"fwd+bwd": lambda: jax.block_until_ready(both(*dev)),
          "igrad": lambda: jax.block_until_ready(igrad(*dev))}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--rev", default="HEAD", help="git revision to compare the working tree with")
  ap.add_argument("--reps", type=int, default=7)
  ap.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    old = ops_at(args.rev, tmp)
    for name in args.shapes:
      n, h, w_in, c, k, s, f = SHAPES[name]
      p = make_problem(n, h, w_in, c, k, s, f)
      runs = {(v, phase): fn for v, m in ((args.rev, old), ("working tree", ops))
              for phase, fn in compile_pair(m, p, s).items()}
      times = interleaved_times(runs, args.reps)
      med = {key: statistics.median(t) * 1e3 for key, t in times.items()}
      for phase in ("fwd+bwd", "igrad"):
        a, b = med[(args.rev, phase)], med[("working tree", phase)]
        rows.append({"shape": name, "phase": phase, f"{args.rev}_ms": a, "working_tree_ms": b,
                     "speedup": a / b})
        print(f"{name:11s} {phase:8s} {args.rev}: {a:8.2f} ms   working tree: {b:8.2f} ms   "
              f"{a / b:.2f}x", flush=True)
  write_result({"rev": args.rev, "jax": jax.__version__, "reps": args.reps, "rows": rows}, args.out)


if __name__ == "__main__":
  main()
