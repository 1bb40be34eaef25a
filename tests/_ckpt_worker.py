"""Worker for tests/test_checkpoint.py: trains the `tiny` preset on one CPU device with
`lcnet.checkpoint.Checkpointer` the way `train.fit` does (resume, save every N, stop on SIGTERM).
With `--multihost IN OUT` (run by `python -m lcnet.launch`) it instead restores IN onto a 1x4x2
mesh over all processes' devices, checks every local shard against IN/expected.npz, and saves
the same state into OUT from all processes.

Batches are a pure function of the step, so a resumed run sees the same data as an uninterrupted
one. Prints one JSON object per line. `--pause-at S` commits the saves in flight, prints
{"paused": S} before step S and waits for a line on stdin (the test signals it meanwhile).
`--kill-in-save S` SIGKILLs this process inside the save of step S, after its data is written and
before it is committed (orbax's rename of `S.orbax-checkpoint-tmp`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

if "--multihost" not in sys.argv:
  os.environ.pop("XLA_FLAGS", None)  # one device: the test's 8 simulated ones are not needed here
else:
  from lcnet import distributed
  distributed.initialize()
import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
import numpy as np  # noqa: E402
from orbax.checkpoint._src.path import atomicity  # noqa: E402

from lcnet import checkpoint, checksums, model, train  # noqa: E402


def emit(**kw) -> None:
  print(json.dumps(kw), flush=True)


def batch(cfg, step: int) -> np.ndarray:
  shape = (cfg.train.batch_size, *cfg.model.image_size, cfg.model.channels)
  return np.random.default_rng([cfg.train.seed, step]).standard_normal(shape).astype(np.float32)


def kill_in_save(step: int) -> None:
  """SIGKILL when orbax is about to commit step `step` (its data already in the tmp dir)."""
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def dying_finalize(self, *a, **kw):
    if self.get_final().name == str(step):
      emit(killing_in_save=step, tmp=os.path.basename(str(self.get())))
      os.kill(os.getpid(), signal.SIGKILL)
    return await finalize(self, *a, **kw)
  atomicity.AtomicRenameTemporaryPath.finalize = dying_finalize


def multihost(src: str, dst: str) -> None:
  from jax.sharding import AxisType, NamedSharding
  from jax.sharding import PartitionSpec as P
  cfg = model.preset("tiny")
  mesh = jax.make_mesh((1, 4, 2), ("data", "rows", "cols"), axis_types=(AxisType.Auto,) * 3)
  like = jax.eval_shape(lambda: train.init_state(cfg))
  with np.load(os.path.join(src, "expected.npz")) as z:
    want = {k: z[k] for k in z.files}
  paths = [checksums.path(p) for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]]

  def canvas(path, x):  # the expected value of a leaf as stored on this mesh, and its sharding
    v = want[path]
    if v.ndim == 6:
      pad = [(0, -(-n // d) * d - n) for n, d in zip(v.shape[:2], (4, 2))] + [(0, 0)] * 4
      return np.pad(v, pad), NamedSharding(mesh, P("rows", "cols"))
    return v, NamedSharding(mesh, P())
  leaves = [canvas(p, x) for p, x in zip(paths, jax.tree.leaves(like))]
  target = jax.tree.unflatten(jax.tree.structure(like), [
      jax.ShapeDtypeStruct(v.shape if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                           else x.shape, x.dtype, sharding=s)
      for (v, s), x in zip(leaves, jax.tree.leaves(like))])
  with checkpoint.Checkpointer(src, cfg, handle_signals=False) as ckpt:
    got = ckpt.restore(target)
  checked = 0
  for (v, _), x in zip(leaves, jax.tree.leaves(got)):
    x = jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    for shard in x.addressable_shards:
      assert np.array_equal(np.asarray(shard.data), v[shard.index]), shard.index
      checked += 1
  emit(restored=int(got.step), shards_checked=checked, process=jax.process_index())
  state = jax.tree.unflatten(jax.tree.structure(like), [
      jax.make_array_from_callback(v.shape, s, lambda idx, v=v: v[idx]) for v, s in leaves])
  state = state.replace(rng=jax.random.wrap_key_data(state.rng))
  with checkpoint.Checkpointer(dst, cfg, handle_signals=False) as ckpt:
    ckpt.save(int(got.step), state, force=True)
  emit(saved=int(got.step), process=jax.process_index())


def main():
  if "--multihost" in sys.argv:
    i = sys.argv.index("--multihost")
    return multihost(sys.argv[i + 1], sys.argv[i + 2])
  ap = argparse.ArgumentParser()
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=int, required=True)
  ap.add_argument("--every", type=int, default=None)
  ap.add_argument("--pause-at", type=int, default=None)
  ap.add_argument("--kill-in-save", type=int, default=None)
  args = ap.parse_args()
  if args.kill_in_save is not None:
    kill_in_save(args.kill_in_save)

  cfg = model.preset("tiny")
  ckpt = checkpoint.Checkpointer(args.workdir, cfg, every=args.every, keep=2)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(jax.eval_shape(lambda: train.init_state(cfg)))
  else:
    state = train.init_state(cfg)
  emit(start=int(state.step))
  train_step = train.make_train_step(cfg)
  for step in range(int(state.step), args.steps):
    if step == args.pause_at:
      ckpt.wait()
      emit(paused=step)
      sys.stdin.readline()
    state, _ = train_step(state, batch(cfg, step))
    ckpt.save(step + 1, state)
    if ckpt.should_stop(step + 1):
      msg = ckpt.stop(step + 1, state)
      ckpt.close()
      emit(stopped=step + 1)
      print(msg, file=sys.stderr, flush=True)
      sys.exit(checkpoint.EXIT_PREEMPTED)
  ckpt.save(args.steps, state, force=True)
  ckpt.close()
  emit(done=args.steps, steps=ckpt.all_steps())


if __name__ == "__main__":
  main()
