"""Spatial partition with explicit halo exchange (Coates et al. 2013), for use inside jax.shard_map.

Every spatial activation of valid size n along an axis split over P devices is stored as P tiles
of T = ceil(n / P) rows (the last tile zero-padded). A windowed op whose output tile is To needs, on
device p, the input rows [p*To*s - pad_lo, p*To*s - pad_lo + (To-1)*s + k): its own rows plus
borders of its neighbours. `window` plans those transfers statically from the shapes and moves
exactly the rows needed with one `lax.ppermute` per (source, destination) pair, so the bytes
permuted equal the halo lower bound and no weights or whole activations ever move. `unwindow` is
its transpose (a window's rows summed back into their owners' tiles), and `ordered_sum` a
reduction over devices in a fixed order. Every `ppermute` of lcnet is in this module.
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


def unwindow(win, axis: int, axis_name: str | None, parts: int, t_in: int, t_out: int, k: int,
             s: int, pad_lo: int = 0):
  """Transpose of `window`: sums a window's rows back into the tiles that own them.

  Rows of the window that belong to this device are added in place; each halo block goes back to
  its owner with one `ppermute` (the reverse of the transfer that brought it).
  """
  length = win.shape[axis]
  if parts == 1:
    pads = [(0, 0)] * win.ndim
    pads[axis] = (0, max(pad_lo + t_in - length, 0))
    return lax.slice_in_dim(jnp.pad(win, pads), pad_lo, pad_lo + t_in, axis=axis)
  p = lax.axis_index(axis_name)
  shape = list(win.shape)
  shape[axis] = t_in + 2 * length
  start = [0] * win.ndim
  start[axis] = length + p * (t_out * s - t_in) - pad_lo
  own = lax.dynamic_update_slice(jnp.zeros(shape, win.dtype), win, start)
  x = lax.slice_in_dim(own, length, length + t_in, axis=axis)
  for t in plan(parts, t_in, t_out, k, s, pad_lo):
    buf = lax.slice_in_dim(win, t.dst_lo, t.dst_lo + t.length, axis=axis)
    buf = lax.ppermute(buf, axis_name, perm=[(t.dst, t.src)])
    place = [(0, 0)] * win.ndim
    place[axis] = (t.src_lo, t_in - t.src_lo - t.length)
    x = x + jnp.pad(buf, place)
  return x


def ordered_sum(v, axis_name: str, parts: int):
  """Inside shard_map: the sum of `v` over the devices of one axis, added in device order, so the
  result has the same bits on every mesh and process layout.

  Used where a sum feeds the next layer (LCN's per-image scale): an all-reduce's order depends on
  how devices map to processes, and last-bit differences would grow through training. Each
  device receives the other parts - 1 values by ppermute and adds all of them in index order.
  """
  me = lax.axis_index(axis_name)
  by_distance = [v]  # by_distance[d] came from device (me - d) % parts
  for d in range(1, parts):
    by_distance.append(lax.ppermute(v, axis_name, [(i, (i + d) % parts) for i in range(parts)]))
  stacked = jnp.stack(by_distance)
  total = None
  for j in range(parts):  # source device j sits at distance (me - j) % parts
    term = lax.dynamic_index_in_dim(stacked, (me - j) % parts, keepdims=False)
    total = term if total is None else total + term
  return total
