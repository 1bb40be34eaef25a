"""Worker for tests/test_distributed.py: trains the `tiny` model on a data x rows x cols mesh for
--steps steps, in one process or under `python -m lcnet.launch`, and (process 0) saves the final
parameters in their valid shapes to --out (.npz). Each process builds only its examples.

With --workdir it trains through `train.fit` (checkpoints, resume, stop on SIGTERM); with
--term-at S, process 1 sends itself SIGTERM once step S is logged: a preemption notice that
reaches one host only."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import numpy as np

from lcnet import distributed

distributed.initialize()

import jax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from lcnet import checkpoint, model, train  # noqa: E402
from lcnet import mesh as mesh_lib  # noqa: E402
from lcnet.config import MeshConfig  # noqa: E402


class Noise:
  """Example i of step t depends on (t, i) alone, so any process can build any slice."""

  def __init__(self, hw):
    self.hw = hw

  def examples(self, step, lo, hi):
    return np.stack([np.random.default_rng((step, i)).standard_normal((*self.hw, 1))
                     for i in range(lo, hi)]).astype(np.float32)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--mesh", default="2,2,2")
  ap.add_argument("--out", required=True)
  ap.add_argument("--workdir", default=None)
  ap.add_argument("--term-at", type=int, default=None)
  args = ap.parse_args()
  jax.config.update("jax_disable_most_optimizations", True)
  cfg = model.preset("tiny")
  cfg = cfg.replace(model=dict(image_size=(23, 21)), train=dict(batch_size=8, optimizer="adam"),
                    mesh=MeshConfig(*map(int, args.mesh.split(","))))
  if args.workdir:
    state, total = fit(cfg.replace(train=dict(steps=args.steps, log_every=1)), args)
  else:
    state = train.init_state(cfg)
    step = train.make_train_step(cfg, total_steps=args.steps)
    put = mesh_lib.batch_putter(cfg, Noise(cfg.model.image_size))
    for t in range(args.steps):
      state, metrics = step(state, put(t))
    total = float(metrics["total"])
  params = multihost_utils.process_allgather(state.params, tiled=True)
  params = mesh_lib.unshard_params(params, cfg)
  if jax.process_index() == 0:
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(args.out, **flat)
  print(json.dumps({"done": True, "process": jax.process_index(), "total": total}), flush=True)


def fit(cfg, args):
  """`train.fit` into --workdir; exits with EXIT_PREEMPTED (after a {"stopped": step} line) if a
  signal stopped it."""
  def log(step, _):
    if step == args.term_at and jax.process_index() == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    if args.term_at is not None and step >= args.term_at:
      time.sleep(0.25)  # the tiny steps take milliseconds: let the notice reach every process
  result = train.fit(cfg, Noise(cfg.model.image_size), args.workdir, log=log)
  if result.stopped:
    print(json.dumps({"stopped": int(result.state.step), "process": jax.process_index()}), flush=True)
    sys.exit(checkpoint.EXIT_PREEMPTED)
  return result.state, float(result.history[-1]["total"])


if __name__ == "__main__":
  main()
