"""Worker for tests/test_distributed.py, run by `python -m lcnet.launch`: a psum and a halo
exchange over a global mesh of all processes' CPU devices, then `--steps` psum steps.

Prints one JSON object per line. LCNET_TEST_FAIL="kill:P:S", "raise:P:S" or "exit:P:S" makes
process P SIGKILL itself / raise / sys.exit(3) at step S, while its peers wait for it in that
step's psum.
"""
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
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

TILE = 4  # elements of the 1-D signal per device


def emit(**kw) -> None:
  print(json.dumps(kw), flush=True)


def total(x_T):
  """Sum of the whole signal: local sum, then psum over devices."""
  return lax.psum(jnp.sum(x_T, keepdims=True), "x")


def smooth3(x_T):
  """y[j] = x[j-1] + x[j] + x[j+1], zero beyond the ends; one-element halos by ppermute."""
  n = lax.axis_size("x")
  from_left = lax.ppermute(x_T[-1:], "x", [(i, i + 1) for i in range(n - 1)])
  from_right = lax.ppermute(x_T[:1], "x", [(i + 1, i) for i in range(n - 1)])
  xp = jnp.concatenate([from_left, x_T, from_right])
  return xp[:-2] + xp[1:-1] + xp[2:]


def maybe_fail(step: int) -> None:
  spec = os.environ.get("LCNET_TEST_FAIL")
  if not spec:
    return
  how, proc, at = spec.split(":")
  if int(proc) == jax.process_index() and int(at) == step:
    time.sleep(0.5)  # let the peers enter this step's collective first
    emit(failing=how, step=step, t=time.time())
    if how == "kill":
      os.kill(os.getpid(), signal.SIGKILL)
    if how == "exit":
      sys.exit(3)  # no exception reaches sys.excepthook: bounded by the shutdown timeout only
    raise RuntimeError(f"injected failure at step {step}")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--steps", type=int, default=0)
  parser.add_argument("--sleep", type=float, default=0.0, help="seconds between steps")
  args = parser.parse_args()

  pi, pc, nl, ng = distributed.process_info()
  emit(info=[pi, pc, nl, ng], devices=[d.id for d in jax.local_devices()])
  mesh = jax.make_mesh((ng,), ("x",), axis_types=(jax.sharding.AxisType.Auto,))
  x_N = np.arange(ng * TILE, dtype=np.float32)
  x = jax.make_array_from_callback(x_N.shape, NamedSharding(mesh, P("x")), lambda idx: x_N[idx])

  psum = jax.jit(jax.shard_map(total, mesh=mesh, in_specs=P("x"), out_specs=P()))
  halo = jax.jit(jax.shard_map(smooth3, mesh=mesh, in_specs=P("x"), out_specs=P("x")))
  s = psum(x)
  y = multihost_utils.process_allgather(halo(x), tiled=True)
  emit(psum=float(np.asarray(s.addressable_data(0))[0]), halo=np.asarray(y).tolist())

  for step in range(args.steps):
    maybe_fail(step)
    s = psum(x + step)
    emit(step=step, psum=float(np.asarray(s.addressable_data(0))[0]), t=time.time())
    time.sleep(args.sleep)
  emit(done=True)


if __name__ == "__main__":
  main()
