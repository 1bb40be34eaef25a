"""The device mesh (data x rows x cols), the canvas shapes of a tiled model, and the shardings of
its train state and batches.

Size-1 axes are left out of the mesh, so a data-parallel-only or rows-only run has a 1-D mesh.
Devices are ordered by (process, id) and reshaped row-major, so the devices of one host fill the
inner axes and hosts vary along the outer axis: halos mostly stay inside a host, and with
`data` >= hosts, data parallelism is what crosses hosts.

Canvas: a grid of n positions split over P devices is stored as P * ceil(n / P) positions, the
tail zero (jax shardings must divide evenly). Kernels w[Ho, Wo, ...] are stored on that canvas,
sharded P('rows', 'cols'); the optimiser state follows them; everything else is replicated.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lcnet import halo, spatial
from lcnet.config import Config, MeshConfig, geometry
from lcnet.data import host_slice

AXES = ("data", "rows", "cols")


def make_mesh(mc: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh | None:
  """The mesh for `mc` (None for 1x1x1: run unsharded). Explicit Auto axes, size-1 axes dropped.

  A single process may use the first mc.size of more devices; several processes use them all.
  """
  if mc.size == 1:
    return None
  devices = sorted(jax.devices() if devices is None else devices, key=lambda d: (d.process_index, d.id))
  if len(devices) > mc.size and jax.process_count() == 1:
    devices = devices[:mc.size]
  if len(devices) != mc.size:
    raise ValueError(
        f"mesh data x rows x cols = {mc.data}x{mc.rows}x{mc.cols} needs {mc.size} devices, but "
        f"{len(devices)} are available in {jax.process_count()} process(es) "
        f"({devices[0].platform}). Change cfg.mesh so the product is "
        f"{len(devices)}, or on CPU simulate devices: XLA_FLAGS=--xla_force_host_platform_device_"
        f"count={mc.size} (or lcnet.distributed.set_cpu_device_count) before jax starts")
  names = tuple(a for a, n in zip(AXES, mc.shape) if n > 1)
  shape = tuple(n for n in mc.shape if n > 1)
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), names,
              axis_types=(AxisType.Auto,) * len(names))


@functools.lru_cache(maxsize=16)
def _cached_mesh(mc: MeshConfig) -> Mesh | None:
  return make_mesh(mc)


def mesh_for(cfg: Config) -> Mesh | None:
  """The mesh of `cfg.mesh` over all devices (cached, so every step shares one Mesh)."""
  return _cached_mesh(cfg.mesh)


def spec(mesh: Mesh, *names: str | None) -> P:
  """PartitionSpec over `names`, with axes the mesh left out (size 1) replaced by None."""
  return P(*(n if n in mesh.axis_names else None for n in names))


def grid(mesh: Mesh) -> spatial.Tiled:
  """The tiled grid that runs the model inside shard_map on this mesh."""
  size = dict(zip(mesh.axis_names, mesh.devices.shape))
  name = lambda a: a if a in size else None
  return spatial.Tiled(rows=size.get("rows", 1), cols=size.get("cols", 1), data=size.get("data", 1),
                       row_axis=name("rows"), col_axis=name("cols"), data_axis=name("data"))


def canvas(n: int, parts: int) -> int:
  return parts * halo.tile(n, parts)


def canvas_hw(hw: Sequence[int], mc: MeshConfig) -> tuple[int, int]:
  return canvas(hw[0], mc.rows), canvas(hw[1], mc.cols)


# The kernel-leaf rule, defined once: a leaf of a params, optimiser-state or train-state tree is a
# spatial kernel w[Ho, Wo, kh, kw, C, F] (or an optimiser moment mirroring one) when it is 6-D and
# sits under a 'layerN' key. Such leaves live on the canvas of cfg.mesh and are tiled over
# rows x cols; every other leaf (step, counts, PRNG key) is replicated.


def kernel_layer(path, x) -> int | None:
  """N - 1 if the leaf at `path` (a jax key path) is a kernel-shaped leaf of 'layerN', else None."""
  if len(getattr(x, "shape", ())) != 6:
    return None
  for k in path:
    key = getattr(k, "key", getattr(k, "name", None))
    if isinstance(key, str) and key.startswith("layer") and key[5:].isdigit():
      return int(key[5:]) - 1
  return None


def valid_kernel_shape(path, x, cfg: Config) -> tuple[int, ...] | None:
  """The model's (unpadded) shape of a kernel leaf; None for other leaves or unknown layers."""
  i, geo = kernel_layer(path, x), geometry(cfg.model)
  return geo[i].encoder_shape if i is not None and i < len(geo) else None


def pad_kernels(tree, cfg: Config):
  """Valid-shape kernel leaves -> canvas leaves for cfg.mesh (zeros on the phantom locations);
  params, an optimiser state or a whole train state."""
  def pad(path, x):
    valid = valid_kernel_shape(path, x, cfg)
    if valid is None:
      return x
    hw = canvas_hw(valid[:2], cfg.mesh)
    return jnp.pad(x, [(0, hw[0] - x.shape[0]), (0, hw[1] - x.shape[1])] + [(0, 0)] * 4)
  return jax.tree_util.tree_map_with_path(pad, tree)


def valid_kernels(tree, cfg: Config):
  """Canvas kernel leaves -> the model's valid shapes (drops the phantom locations)."""
  def crop(path, x):
    valid = valid_kernel_shape(path, x, cfg)
    return x if valid is None else x[:valid[0], :valid[1]]
  return jax.tree_util.tree_map_with_path(crop, tree)


def state_shardings(abstract_state: Any, mesh: Mesh):
  """Shardings for a whole train state: kernel leaves tiled over rows x cols, the rest replicated."""
  tiled = NamedSharding(mesh, spec(mesh, "rows", "cols"))
  replicated = NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(
      lambda p, x: tiled if kernel_layer(p, x) is not None else replicated, abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, spec(mesh, "data", "rows", "cols"))


def put_batch(images_NxHxWxC, mesh: Mesh, cfg: Config, global_batch: int | None = None):
  """This process's images -> the global batch on the mesh, padded to the canvas.

  `images` holds the examples this process's devices need (`process_examples`), or the whole
  global batch in a single-process run.
  """
  x = np.asarray(images_NxHxWxC, jnp.dtype(cfg.model.compute_dtype))
  h, w = canvas_hw(cfg.model.image_size, cfg.mesh)
  x = np.pad(x, ((0, 0), (0, h - x.shape[1]), (0, w - x.shape[2]), (0, 0)))
  n = global_batch or cfg.train.batch_size
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(x, sharding)
  return jax.make_array_from_process_local_data(sharding, x, (n, *x.shape[1:]))


def process_examples(mesh: Mesh, global_batch: int) -> tuple[int, int]:
  """[lo, hi): the examples of the global batch that this process's devices hold."""
  idx = NamedSharding(mesh, spec(mesh, "data")).addressable_devices_indices_map((global_batch,))
  spans = [(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop) for s in idx.values()]
  lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
  return lo, hi


# ------------------------------------------------------------------------------------------------
# Laying out states and batches for cfg.mesh (and back).


def shard_state(state, cfg: Config):
  """An unsharded (valid-shape) state -> the same values laid out for cfg.mesh."""
  mesh = mesh_for(cfg)
  if mesh is None:
    return state
  padded = pad_kernels(state, cfg)
  return jax.device_put(padded, state_shardings(padded, mesh))


def unshard_params(params, cfg: Config):
  """Kernels in the model's valid shapes, whatever mesh they live on (for notebooks)."""
  return valid_kernels(params, cfg) if cfg.mesh.size > 1 else params


def host_params(params, cfg: Config):
  """The parameters as NumPy arrays of the model's valid shapes on every process (with several
  processes this gathers the shards: every process must call it)."""
  from jax.experimental import multihost_utils

  def host(x):
    if getattr(x, "is_fully_addressable", True):
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return valid_kernels(jax.tree.map(host, params), cfg)


class BatchSource(Protocol):
  """Anything that gives the global batch for a step: a pure function of the step."""

  def batch(self, step: int) -> np.ndarray: ...


def process_slice(cfg: Config) -> tuple[int, int]:
  """(lo, hi): the examples lo..hi-1 of the global batch that this process' devices hold."""
  mesh = mesh_for(cfg)
  return (0, cfg.train.batch_size) if mesh is None else process_examples(mesh, cfg.train.batch_size)


def batch_placer(cfg: Config) -> Callable[[np.ndarray], jax.Array]:
  """`place(x)`: this process' slice of a step's batch (`process_slice`) on the device(s), laid out
  for cfg.mesh; a clear error if its shape is not what the config needs."""
  mesh = mesh_for(cfg)
  n = cfg.train.batch_size
  lo, hi = process_slice(cfg)
  want = (hi - lo, *cfg.model.image_size, cfg.model.channels)

  def place(x):
    if tuple(x.shape) != want:
      raise ValueError(f"data gives batches of shape {tuple(x.shape)} but this process needs "
                       f"{want} (examples {lo}..{hi - 1} of train.batch_size={n}, model.image_size, "
                       f"model.channels); fix the data source or the config")
    return (jnp.asarray(x, cfg.model.compute_dtype) if mesh is None
            else put_batch(x, mesh, cfg))

  return place


def batch_putter(cfg: Config, data: BatchSource) -> Callable[[int], jax.Array]:
  """`put(step)`: the step's global batch on the device(s), laid out for cfg.mesh; each process
  reads only the examples its devices hold (`process_slice`, `host_slice`)."""
  place, (lo, hi) = batch_placer(cfg), process_slice(cfg)
  return lambda step: place(host_slice(data, step, lo, hi))
