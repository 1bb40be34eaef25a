"""Spatial partition with explicit halo exchange (Coates et al. 2013), for use inside jax.shard_map.

Every spatial activation of valid size n along an axis split over P devices is stored as P tiles
of T = ceil(n / P) rows (the last tile zero-padded). A windowed op whose output tile is To needs, on
device p, the input rows [p*To*s - pad_lo, p*To*s - pad_lo + (To-1)*s + k): its own rows plus
borders of its neighbours. `window` plans those transfers statically from the shapes and moves
exactly the rows needed with one `lax.ppermute` per (source, destination) pair, so the bytes
permuted equal the halo lower bound and no weights or whole activations ever move.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from jax import lax


@dataclasses.dataclass(frozen=True)
class Transfer:
  src: int  # device index along the axis that sends
  dst: int  # device that receives
  src_lo: int  # first row in the sender's tile
  length: int
  dst_lo: int  # where the rows land in the receiver's window


def tile(n: int, parts: int) -> int:
  """Rows per device for a valid size n split over `parts` devices (last tile padded)."""
  return -(-n // parts)


def plan(parts: int, t_in: int, t_out: int, k: int, s: int, pad_lo: int = 0) -> list[Transfer]:
  """Rows each device must receive from others to hold its whole input window."""
  length = (t_out - 1) * s + k
  out = []
  for p in range(parts):
    a = p * t_out * s - pad_lo
    for q in range(parts):
      if q == p:
        continue
      lo, hi = max(a, q * t_in), min(a + length, (q + 1) * t_in)
      if hi > lo:
        out.append(Transfer(q, p, lo - q * t_in, hi - lo, lo - a))
  return out


def halo_rows(parts: int, t_in: int, t_out: int, k: int, s: int, pad_lo: int = 0) -> int:
  """Lower bound on rows received over all devices of the axis (the halo volume)."""
  return sum(t.length for t in plan(parts, t_in, t_out, k, s, pad_lo))


def window(x, axis: int, axis_name: str, parts: int, t_out: int, k: int, s: int, pad_lo: int = 0):
  """Inside shard_map: this device's input window along `axis`, length (t_out - 1)*s + k.

  `x` is the local tile (t_in rows along `axis`). Rows outside the global canvas are zeros.
  """
  t_in = x.shape[axis]
  length = (t_out - 1) * s + k
  if parts == 1:
    pads = [(0, 0)] * x.ndim
    pads[axis] = (pad_lo, max(length - t_in - pad_lo, 0))
    return lax.slice_in_dim(jnp.pad(x, pads), 0, length, axis=axis)
  p = lax.axis_index(axis_name)
  # own rows: the tile, zero-padded by `length` on both sides, sliced at this device's offset
  pads = [(0, 0)] * x.ndim
  pads[axis] = (length, length)
  start = length + p * (t_out * s - t_in) - pad_lo
  starts = [0] * x.ndim
  starts[axis] = start
  sizes = list(x.shape)
  sizes[axis] = length
  win = lax.dynamic_slice(jnp.pad(x, pads), starts, sizes)
  for t in plan(parts, t_in, t_out, k, s, pad_lo):
    buf = lax.slice_in_dim(x, t.src_lo, t.src_lo + t.length, axis=axis)
    buf = lax.ppermute(buf, axis_name, perm=[(t.src, t.dst)])  # zeros on every other device
    place = [(0, 0)] * x.ndim
    place[axis] = (t.dst_lo, length - t.dst_lo - t.length)
    win = win + jnp.pad(buf, place)
  return win
