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
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lcnet import halo, spatial
from lcnet.config import Config, MeshConfig, geometry

AXES = ("data", "rows", "cols")


def make_mesh(mc: MeshConfig, devices: Optional[Sequence[jax.Device]] = None) -> Optional[Mesh]:
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
        f"{len(devices)} are available in {jax.process_count()} process(es) ({devices[0].platform}). Change cfg.mesh so the product is "
        f"{len(devices)}, or on CPU simulate devices: XLA_FLAGS=--xla_force_host_platform_device_"
        f"count={mc.size} (or lcnet.distributed.set_cpu_device_count) before jax starts")
  names = tuple(a for a, n in zip(AXES, mc.shape) if n > 1)
  shape = tuple(n for n in mc.shape if n > 1)
  return Mesh(np.asarray(devices, dtype=object).reshape(shape), names,
              axis_types=(AxisType.Auto,) * len(names))


@functools.lru_cache(maxsize=16)
def _cached_mesh(mc: MeshConfig) -> Optional[Mesh]:
  return make_mesh(mc)


def mesh_for(cfg: Config) -> Optional[Mesh]:
  """The mesh of `cfg.mesh` over all devices (cached, so every step shares one Mesh)."""
  return _cached_mesh(cfg.mesh)


def spec(mesh: Mesh, *names: Optional[str]) -> P:
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


def kernel_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
  """Stored shape of every layer's kernels on cfg.mesh (the valid shape for 1x1 rows x cols)."""
  out = {}
  for i, g in enumerate(geometry(cfg.model)):
    out[f"layer{i + 1}"] = (*canvas_hw(g.out_hw, cfg.mesh), *g.encoder_shape[2:])
  return out


def pad_params(params, cfg: Config):
  """Valid-shape kernels -> canvas kernels for cfg.mesh (zeros on the phantom locations)."""
  shapes = kernel_shapes(cfg)

  def pad(name, w):
    want = shapes[name]
    return jnp.pad(w, [(0, a - b) for a, b in zip(want, w.shape)])

  return {name: jax.tree.map(lambda w: pad(name, w), layer) for name, layer in params.items()}


def valid_params(params, cfg: Config):
  """Canvas kernels -> the model's valid shapes (drops the phantom locations)."""
  hw = {f"layer{i + 1}": g.out_hw for i, g in enumerate(geometry(cfg.model))}
  return {name: jax.tree.map(lambda w: w[:hw[name][0], :hw[name][1]], layer)
          for name, layer in params.items()}


def state_shardings(abstract_state: Any, mesh: Mesh):
  """Shardings for a whole train state: kernel-shaped leaves (6-D: params and the optimiser's
  moments) tiled over rows x cols, every other leaf (step, counts, PRNG key) replicated."""
  tiled = NamedSharding(mesh, spec(mesh, "rows", "cols"))
  replicated = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: tiled if len(x.shape) == 6 else replicated, abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, spec(mesh, "data", "rows", "cols"))


def put_batch(images_NxHxWxC, mesh: Mesh, cfg: Config, global_batch: Optional[int] = None):
  """This process's images -> the global batch on the mesh, padded to the canvas.

  `images` holds the examples this process's devices need (`process_examples`), or the whole
  global batch in a single-process run.
  """
  x = np.asarray(images_NxHxWxC, np.float32)
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
