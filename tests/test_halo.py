"""The halo-exchange partition of the local filter equals the unsharded op, forward and gradients,
and its compiled program moves only halos (no all-gather, permute bytes = the halo volume)."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
from numerics import assert_reordered_close

from lcnet import halo, ops


def sharded_local_filter(mesh, py, px, shape):
  n, h, w, c, k, s, f = shape
  ho, wo = ops.output_size(h, k, s), ops.output_size(w, k, s)
  to_y, to_x = halo.tile(ho, py), halo.tile(wo, px)

  def body(x_tile, w_tile):
    xw = halo.window(x_tile, 1, "rows", py, to_y, k, s)
    xw = halo.window(xw, 2, "cols", px, to_x, k, s)
    return ops.local_filter(xw, w_tile, (s, s))

  return jax.shard_map(body, mesh=mesh, in_specs=(P(None, "rows", "cols"), P("rows", "cols")),
                       out_specs=P(None, "rows", "cols")), (ho, wo, to_y, to_x)


def canvas(a, axes_sizes):
  """Zero-pad the leading spatial axes of `a` up to the given sizes."""
  pads = [(0, 0)] * a.ndim
  for ax, size in axes_sizes.items():
    pads[ax] = (0, size - a.shape[ax])
  return np.pad(a, pads)


def on(*cases):
  """Mesh shapes (or (mesh shape, *args)) as parameters, each marked with the devices it needs."""
  out = []
  for c in cases:
    args = c if isinstance(c[0], tuple) else (c,)
    out.append(pytest.param(*args, marks=pytest.mark.needs_devices(math.prod(args[0]))))
  return out


@pytest.mark.parametrize("mesh_shape", on((8, 1), (2, 4), (1, 8), (4, 2), (2, 2)))
@pytest.mark.parametrize("shape", [(2, 23, 19, 3, 5, 2, 4), (1, 30, 26, 2, 6, 1, 3)])
def test_halo_local_filter_equals_unsharded(mesh_shape, shape):
  py, px = mesh_shape
  mesh = jax.make_mesh(mesh_shape, ("rows", "cols"), axis_types=(AxisType.Auto,) * 2)
  n, h, w, c, k, s, f = shape
  fn, (ho, wo, to_y, to_x) = sharded_local_filter(mesh, py, px, shape)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, h, w, c)).astype(np.float32)
  wt = rng.standard_normal((ho, wo, k, k, c, f)).astype(np.float32)
  g = rng.standard_normal((n, ho, wo, f)).astype(np.float32)
  xc = canvas(x, {1: py * halo.tile(h, py), 2: px * halo.tile(w, px)})
  wc = canvas(wt, {0: py * to_y, 1: px * to_x})
  gc = canvas(g, {1: py * to_y, 2: px * to_x})
  loss = jax.jit(lambda a, b: jnp.sum(fn(a, b) * gc))
  y = np.asarray(jax.jit(fn)(xc, wc))[:, :ho, :wo]
  # tiles vs whole arrays: the same sums (k*k*c per output, n*ceil(k/s)^2*f per input gradient,
  # n per weight gradient) in other orders
  red = n * k * k * max(c, f)
  assert_reordered_close(y, ops.local_filter(x, wt, (s, s)), red)
  dx, dw = jax.grad(loss, argnums=(0, 1))(xc, wc)
  dx_ref, dw_ref = jax.grad(lambda a, b: jnp.sum(ops.local_filter(a, b, (s, s)) * g),
                            argnums=(0, 1))(x, wt)
  assert_reordered_close(np.asarray(dx)[:, :h, :w], dx_ref, red)
  assert_reordered_close(np.asarray(dw)[:ho, :wo], dw_ref, red)
  # phantom (padding) rows and columns of the canvas get no gradient from real outputs
  assert np.all(np.asarray(dx)[:, h:] == 0) and np.all(np.asarray(dx)[:, :, w:] == 0)


def permute_bytes(hlo: str) -> int:
  total = 0
  for m in re.finditer(r"= f32\[([\d,]*)\][^=]*? collective-permute(?:-start)?\(", hlo):
    total += 4 * int(np.prod([int(d) for d in m.group(1).split(",") if d]))
  return total


@pytest.mark.needs_devices(8)
def test_compiled_step_moves_only_halos():
  py, px, shape = 2, 4, (2, 23, 19, 3, 5, 2, 4)
  n, h, w, c, k, s, f = shape
  mesh = jax.make_mesh((py, px), ("rows", "cols"), axis_types=(AxisType.Auto,) * 2)
  fn, (ho, wo, to_y, to_x) = sharded_local_filter(mesh, py, px, shape)
  ti_y, ti_x = halo.tile(h, py), halo.tile(w, px)
  xc = jnp.zeros((n, py * ti_y, px * ti_x, c))
  wc = jnp.zeros((py * to_y, px * to_x, k, k, c, f))
  hlo = jax.jit(fn).lower(xc, wc).compile().as_text()
  assert "all-gather" not in hlo and "all-to-all" not in hlo
  # halo volume: rows pass moves whole tile widths, the cols pass moves window-height columns
  rows = halo.halo_rows(py, ti_y, to_y, k, s) * ti_x * n * c * 4
  win_h = (to_y - 1) * s + k
  cols = halo.halo_rows(px, ti_x, to_x, k, s) * win_h * n * c * 4
  got = permute_bytes(hlo)
  assert got > 0 and got <= 1.2 * (rows + cols), (got, rows + cols)


def test_plan_matches_a_hand_count():
  # 23 rows on 2 devices (tiles of 12), 5x5 windows, stride 2 -> 10 outputs, tiles of 5:
  # device 0 reads rows 0..12 (row 12 from device 1); device 1 reads rows 10..22 (10, 11 from 0).
  assert halo.plan(2, 12, 5, 5, 2) == [halo.Transfer(1, 0, 0, 1, 12), halo.Transfer(0, 1, 10, 2, 0)]
  assert halo.halo_rows(2, 12, 5, 5, 2) == 3


@pytest.mark.parametrize("mesh_shape,size,stride", on(((2, 4), 3, 1), ((4, 2), 5, 2), ((8, 1), 2, 2),
                                                      ((1, 4), 3, 2)))
def test_halo_window_serves_l2_pooling(mesh_shape, size, stride):
  """The same window() partitions L2 pooling: sharded == unsharded, forward and input gradient."""
  py, px = mesh_shape
  mesh = jax.make_mesh(mesh_shape, ("rows", "cols"), axis_types=(AxisType.Auto,) * 2)
  h, w = 21, 18
  ho, wo = ops.output_size(h, size, stride), ops.output_size(w, size, stride)
  to_y, to_x = halo.tile(ho, py), halo.tile(wo, px)

  def body(x_tile):
    xw = halo.window(x_tile, 1, "rows", py, to_y, size, stride)
    xw = halo.window(xw, 2, "cols", px, to_x, size, stride)
    return ops.l2_pool(xw, size, stride, 1e-2)

  fn = jax.shard_map(body, mesh=mesh, in_specs=P(None, "rows", "cols"),
                     out_specs=P(None, "rows", "cols"))
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
  g = rng.standard_normal((2, ho, wo, 3)).astype(np.float32)
  xc = canvas(x, {1: py * halo.tile(h, py), 2: px * halo.tile(w, px)})
  gc = canvas(g, {1: py * to_y, 2: px * to_x})
  y = np.asarray(jax.jit(fn)(xc))[:, :ho, :wo]
  assert_reordered_close(y, ops.l2_pool(x, size, stride, 1e-2), size * size)
  dx = jax.grad(lambda a: jnp.sum(fn(a) * gc))(xc)
  dx_ref = jax.grad(lambda a: jnp.sum(ops.l2_pool(a, size, stride, 1e-2) * g))(x)
  assert_reordered_close(np.asarray(dx)[:, :h, :w], dx_ref, size * size, depth=2)


def test_unwindow_is_the_transpose_of_window():
  mesh = jax.make_mesh((4,), ("rows",), axis_types=(jax.sharding.AxisType.Auto,))
  t_in, t_out, k, s, pad = 6, 5, 5, 1, 2
  f = lambda x: halo.window(x, 1, "rows", 4, t_out, k, s, pad)
  ft = lambda w: halo.unwindow(w, 1, "rows", 4, t_in, t_out, k, s, pad)
  spec = jax.sharding.PartitionSpec(None, "rows")
  fwd = jax.shard_map(f, mesh=mesh, in_specs=spec, out_specs=spec)
  bwd = jax.shard_map(ft, mesh=mesh, in_specs=spec, out_specs=spec)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4 * t_in, 3)).astype(np.float32)
  w = rng.standard_normal((2, 4 * ((t_out - 1) * s + k), 3)).astype(np.float32)
  # <window(x), w> == <x, unwindow(w)>
  np.testing.assert_allclose(jnp.vdot(fwd(x), w), jnp.vdot(x, bwd(w)), rtol=1e-5)
  np.testing.assert_allclose(bwd(w), jax.vjp(fwd, x)[1](w)[0], rtol=1e-6, atol=1e-6)


def test_ordered_sum_adds_every_device_in_index_order():
  """Each device gets the same total; integers make the float sum exact, so equality is exact."""
  mesh = jax.make_mesh((4,), ("rows",), axis_types=(AxisType.Auto,))
  v = np.arange(4 * 3, dtype=np.float32).reshape(4, 3) ** 2
  f = jax.shard_map(lambda x: halo.ordered_sum(x, "rows", 4), mesh=mesh, in_specs=P("rows"),
                    out_specs=P("rows"))
  np.testing.assert_array_equal(np.asarray(f(v)), np.tile(v.sum(0), (4, 1)))
