"""Where a layer's spatial ops run: `DENSE` (whole arrays, one device) or `Tiled` (one spatial tile
per device inside `jax.shard_map`, with halo exchange). The model is written once against this
interface, so the sharded train step is the unsharded step with a different grid.

Every op takes the valid (unpadded) size of its input grid: a tile's shape does not say where the
real activations end. Tiled activations follow the canvas convention of `lcnet.halo`: P tiles of
ceil(n / P) rows, the phantom rows past n kept at exactly zero, so they add nothing to any sum and
receive no gradient.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

from lcnet import halo, ops


class Dense:
  """Whole arrays on one device: plain `lcnet.ops`."""
  tiled = False

  def local_filter(self, x, w, in_hw, strides, tuning=None):
    return ops.local_filter(x, w, strides, tuning=tuning)

  def local_filter_transpose(self, y, w, in_hw, strides, tuning=None):
    return ops.local_filter_transpose(y, w, in_hw, strides, tuning=tuning)

  def l2_pool(self, h, in_hw, size, stride, eps):
    return ops.l2_pool(h, size, stride, eps)

  def lcn(self, h, hw, size, sigma, eps):
    return ops.local_contrast_norm(h, size, sigma, eps)

  def example_sums(self, v_NxHxWxC):
    """Per-example sum over positions and channels."""
    return jnp.sum(v_NxHxWxC, axis=(1, 2, 3))

  def batch_mean(self, v_N):
    return jnp.mean(v_N)


DENSE = Dense()


@dataclasses.dataclass(frozen=True)
class Tiled:
  """This device's tile of every activation, inside `jax.shard_map` over (data, rows, cols).

  An axis name is None when that mesh axis is absent (size 1): nothing is exchanged along it.
  """
  rows: int = 1
  cols: int = 1
  data: int = 1
  row_axis: str | None = "rows"
  col_axis: str | None = "cols"
  data_axis: str | None = "data"
  tiled = True

  def _spatial_axes(self) -> tuple[str, ...]:
    return tuple(a for a in (self.row_axis, self.col_axis) if a is not None)

  def _window(self, x, out_tiles, kernel, strides, pad_lo=(0, 0)):
    x = halo.window(x, 1, self.row_axis, self.rows, out_tiles[0], kernel[0], strides[0], pad_lo[0])
    return halo.window(x, 2, self.col_axis, self.cols, out_tiles[1], kernel[1], strides[1], pad_lo[1])

  def _unwindow(self, win, in_tiles, out_tiles, kernel, strides):
    win = halo.unwindow(win, 2, self.col_axis, self.cols, in_tiles[1], out_tiles[1], kernel[1], strides[1])
    return halo.unwindow(win, 1, self.row_axis, self.rows, in_tiles[0], out_tiles[0], kernel[0], strides[0])

  def _out_tiles(self, in_hw, kernel, strides):
    out = [ops.output_size(n, k, s) for n, k, s in zip(in_hw, kernel, strides)]
    return out, (halo.tile(out[0], self.rows), halo.tile(out[1], self.cols))

  def valid_mask(self, hw, dtype=jnp.float32, extra: int = 0, pad_lo: int = 0):
    """[1, th + extra, tw + extra, 1]: 1 where this device's tile (or its window reaching `pad_lo`
    before and `extra - pad_lo` after it) covers a real position of an hw grid, else 0."""
    th, tw = halo.tile(hw[0], self.rows), halo.tile(hw[1], self.cols)
    ry = self._index(self.row_axis) * th - pad_lo + jnp.arange(th + extra)
    rx = self._index(self.col_axis) * tw - pad_lo + jnp.arange(tw + extra)
    m = ((ry >= 0) & (ry < hw[0]))[:, None] & ((rx >= 0) & (rx < hw[1]))[None, :]
    return m[None, :, :, None].astype(dtype)

  @staticmethod
  def _index(axis):
    return 0 if axis is None else lax.axis_index(axis)

  def local_filter(self, x, w, in_hw, strides, tuning=None):
    kernel = w.shape[2:4]
    _, tiles = self._out_tiles(in_hw, kernel, strides)
    _check_tile(w.shape[:2], tiles, "encoder weights")
    return ops.local_filter(self._window(x, tiles, kernel, strides), w, strides, tuning=tuning)

  def local_filter_transpose(self, y, w, in_hw, strides, tuning=None):
    """Each device decodes its output tile into its input window, then sends the window's
    borders back to the neighbours that own those rows (the transpose of the halo exchange)."""
    kernel = w.shape[2:4]
    _, tiles = self._out_tiles(in_hw, kernel, strides)
    _check_tile(y.shape[1:3], tiles, "decoder responses")
    win_hw = [(t - 1) * s + k for t, s, k in zip(tiles, strides, kernel)]
    win = ops.local_filter_transpose(y, w, win_hw, strides, tuning=tuning)
    in_tiles = (halo.tile(in_hw[0], self.rows), halo.tile(in_hw[1], self.cols))
    return self._unwindow(win, in_tiles, tiles, kernel, strides)

  def l2_pool(self, h, in_hw, size, stride, eps):
    """Pooled tile with phantom positions set to 0 (they would be sqrt(eps) or mix in borders)."""
    kernel, strides = (size, size), (stride, stride)
    out, tiles = self._out_tiles(in_hw, kernel, strides)
    p = ops.l2_pool(self._window(h, tiles, kernel, strides), size, stride, eps)
    return p * self.valid_mask(out, p.dtype)

  def lcn(self, h, hw, size, sigma, eps):
    """`ops.lcn` on a tile: Gaussian means over a halo window, border renormalisation from the
    valid mask, the per-image mean sd summed over the spatial axes in a fixed order."""
    g = ops.gaussian_window(size, sigma)
    tiles = h.shape[1:3]
    pad = ((size - 1) // 2, (size - 1) // 2)
    mask = self.valid_mask(hw, h.dtype)
    norm = self._blur(self.valid_mask(hw, h.dtype, size - 1, pad[0]), g)  # local: no exchange
    norm = jnp.where(norm > 0, norm, 1.0)  # phantom positions far from real ones

    def gmean(z):
      return self._blur(self._window(z, tiles, (size, size), (1, 1), pad), g) / norm

    image_mean = lambda sd: self._ordered_sum(jnp.sum(sd * mask, axis=(1, 2, 3), keepdims=True)) / (
        hw[0] * hw[1])
    return ops.lcn(h, gmean, image_mean, eps, mask)

  @staticmethod
  def _blur(z_window, g):
    """VALID separable Gaussian over a window already holding the halo."""
    k = g.shape[0]
    dn = ("NHWC", "HWIO", "NHWC")
    z = lax.conv_general_dilated(z_window, jnp.asarray(g).reshape(k, 1, 1, 1), (1, 1), "VALID",
                                 dimension_numbers=dn)
    return lax.conv_general_dilated(z, jnp.asarray(g).reshape(1, k, 1, 1), (1, 1), "VALID",
                                    dimension_numbers=dn)

  def _ordered_sum(self, v):
    """Sum over the spatial axes in device order (`halo.ordered_sum`): the same bits on every
    mesh and process layout."""
    for axis, parts in ((self.row_axis, self.rows), (self.col_axis, self.cols)):
      if axis is not None:
        v = halo.ordered_sum(v, axis, parts)
    return v

  def _spatial_psum(self, v):
    axes = self._spatial_axes()
    return lax.psum(v, axes) if axes else v

  def example_sums(self, v_NxHxWxC):
    """Per-example sums over the whole grid (phantoms are zero), reduced over rows and cols."""
    return self._spatial_psum(jnp.sum(v_NxHxWxC, axis=(1, 2, 3)))

  def batch_mean(self, v_N):
    """Mean over the global batch: this device's examples are one `data` slice of it."""
    s = jnp.sum(v_N)
    if self.data_axis is not None:
      s = lax.psum(s, self.data_axis)
    return s / (v_N.shape[0] * self.data)


def _check_tile(got: Sequence[int], want: Sequence[int], what: str):
  if tuple(got) != tuple(want):
    raise ValueError(f"{what}: tile {tuple(got)} but the mesh and grid give tiles {tuple(want)}; "
                     f"the state was built for another mesh — build it with "
                     f"lcnet.train.init_state(cfg) / restore it for this cfg.mesh")
