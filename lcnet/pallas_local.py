"""Untied local filtering as fused Pallas kernels: Triton on NVIDIA GPUs, interpret mode elsewhere.

The XLA formulation (`lcnet.ops`) materialises each block's patches in memory: every input pixel
is copied kh*kw times through HBM. These kernels build the patches on chip instead: each program
reads its windows straight from the input, and every weight is read (or, for the weight
gradient, written) exactly once per pass and batch block. Accumulation is float32.

Three kernels, one per pass of `ops.local_filter` (layout as there: x[N,H,W,C] and
w[Ho,Wo,kh,kw,C,F], VALID windows over an already padded input), each over a grid of programs
that take `cols` adjacent columns of one row and up to `batch` examples (`ops.PallasTiles`; each
batch block reads the weights again):
- `forward`:     y[n,oy,ox,f] = sum_{i,j,c} x[n, oy*sy+i, ox*sx+j, c] w[oy,ox,i,j,c,f]. One program
  per (batch block, output row, `cols` output locations); per kernel row i one product
  [N, span] x [span, cols*F]: the input span the locations' windows cover is loaded once, and
  location l's weights sit at lanes l*sx*C.. of it (zero elsewhere).
- `input_grad`:  dx = the transpose (also the untied decoder's forward). One program per (batch
  block, input row, `cols` input columns), gathering the windows that cover them: no scatter, no
  atomics, so the result is deterministic.
- `weight_grad`: dw[oy,ox,i,j,c,f] = sum_n x[n, ...] g[n,oy,ox,f]. One program per (kernel row,
  output row, `cols` output locations); the batch is the contraction, and the product
  [span, cols*F] holds every location's weights at the lanes of its window.
With cols = 1 each program is one location (one input pixel): the kernels measured on an H200.

Triton wants power-of-two tiles of at least 16 in every matmul dimension, so tiles are padded
and the padding lanes masked: loads of them read nothing, stores of them write nothing. F = 8
maps are padded to 16 lanes in registers only; memory is never padded or copied. Flat indices are
int32: every operand must have < 2**31 elements (a sharded step's per-device blocks do).
On the GPU masked lanes keep their unclamped indices, and lane indices are split with truncating
division (`lax.div` / `lax.rem`, equal to floor on lanes >= 0): both let Triton see that the
weights' map lanes are contiguous and load them 128 bits at a time. With a clamped index or
jnp's floor division every access was scalar (BENCHMARKS.md, "The GPU suite on a second H200
loan").
On the CPU the same kernels run in Pallas interpret mode (slow; for tests and correctness), and
inside shard_map vmapped over the grid (`_run` says why).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lcnet import ops

_lanes = ops.pallas_lanes


def _tiles(tiles: ops.PallasTiles | None) -> ops.PallasTiles:
  return ops.DEFAULT_TUNING["gpu"].pallas if tiles is None else tiles


def _batch_tile(n: int, tiles: ops.PallasTiles) -> int:
  return min(_lanes(n), tiles.batch)


def _interpret() -> bool:
  return jax.default_backend() != "gpu"


def _check_size(where: str, **arrays):
  for name, shape in arrays.items():
    size = 1
    for d in shape:
      size *= d
    if size > ops.PALLAS_MAX_ELEMENTS:
      raise ValueError(f"{where}: {name}{tuple(shape)} has {size:,} elements, more than the Pallas "
                       f"local kernels' int32 indexing allows (2**31 - 1). Use "
                       f"model.local_op.contract='einsum', or shard the layer over more devices.")


def _dot(a, b, trans_a: bool = False):
  """float32-accumulated product at jax's default matmul precision, as XLA's own dots get it:
  TF32 tensor cores on NVIDIA GPUs by default, IEEE float32 under "highest" / "float32"."""
  exact = jax.config.jax_default_matmul_precision in ("highest", "float32")
  return plgpu.dot(a, b, trans_a=trans_a, precision=lax.Precision.HIGHEST if exact else None)


def _unrolled(n: int, body, acc):
  """A loop of static length, unrolled (Triton pipelines the loads of consecutive steps)."""
  for i in range(n):
    acc = body(i, acc)
  return acc


def _run(kernel, out_size: int, dtype, grid, *operands, num_warps: int):
  """Runs `kernel(program_ids, load, *refs) -> (index, value, mask)` for every program of `grid`
  over flat operands; each program's masked lanes of `value` go to `out[index]` (every output
  element is written by exactly one lane of one program). `load(ref, index, mask)` is a masked
  gather that yields 0 where `mask` is False.

  On a GPU: one Triton pallas_call. Elsewhere: Pallas interpret mode; but interpret mode cannot
  take operands that vary over shard_map's mesh axes (jax 0.10-0.12 evaluate the kernel with
  unvarying constants beside varying data and refuse the mix), so there the same kernel body
  runs vmapped over the grid, with jnp gathers and one scatter as its loads and store."""
  flat = [jnp.asarray(o).reshape(-1) for o in operands]
  varying = jax.typeof(sum(o[0] for o in flat)).manual_axis_type  # the operands' mesh axes
  if _interpret() and varying.varying:
    return _emulate(kernel, out_size, dtype, grid, flat)
  interpret = _interpret()
  dump = out_size if interpret else 0  # interpret mode writes masked lanes too: to a spare

  def body(*refs):
    ids = tuple(pl.program_id(a) for a in range(len(grid)))
    load = _pallas_load if interpret else _triton_load
    idx, val, mask = kernel(ids, load, *refs[:-1])
    # Triton: a masked store needs no clamped index (a clamp hides the index's contiguity)
    out_idx = jnp.where(mask, idx, dump) if interpret else idx
    plgpu.store(refs[-1].at[out_idx], val.astype(dtype), mask=mask)

  any_spec = pl.BlockSpec(memory_space=pl.ANY)
  out = pl.pallas_call(
      body, out_shape=jax.ShapeDtypeStruct((out_size + interpret,), dtype,
                                           manual_axis_type=varying),
      grid=grid, in_specs=[any_spec] * len(flat), out_specs=any_spec,
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=2),
      interpret=interpret)(*flat)
  return out[:out_size] if interpret else out


def _pallas_load(ref, idx, mask):
  """Interpret mode's masked load: the interpreter gathers every lane, so masked lanes' indices
  are clamped into the array."""
  return plgpu.load(ref.at[jnp.where(mask, idx, 0)], mask=mask, other=0.0)


def _triton_load(ref, idx, mask):
  """A masked Triton load reads nothing at masked lanes: no clamped index needed."""
  return plgpu.load(ref.at[idx], mask=mask, other=0.0)


def _emulate(kernel, out_size, dtype, grid, flat):
  def load(arr, idx, mask):
    return jnp.where(mask, arr[jnp.where(mask, idx, 0)], 0.0)

  ids = [i.reshape(-1) for i in jnp.meshgrid(*map(jnp.arange, grid), indexing="ij")]
  idx, val, mask = jax.vmap(lambda *i: kernel(i, load, *flat))(*ids)
  out = jnp.zeros((out_size + 1,), dtype).at[jnp.where(mask, idx, out_size)].set(val.astype(dtype))
  return out[:out_size]


TRITON_MAX_TILE = 2**20  # Triton's most elements per tensor (TRITON_MAX_TENSOR_NUMEL)


def _check_tiles(where: str, tiles: ops.PallasTiles, **shapes):
  """Each on-chip tile within Triton's limit, or an error naming the setting to lower."""
  for name, (a, b) in shapes.items():
    if a * b > TRITON_MAX_TILE:
      raise ValueError(f"{where}: the {name} tile [{a}, {b}] has more than Triton's 2**20 "
                       f"elements; lower model.local_op.pallas_cols (now {tiles.cols}) or "
                       f"pallas_batch (now {tiles.batch})")


def _cols(tiles: ops.PallasTiles, size: int) -> int:
  """Adjacent columns per program: at most the row."""
  return min(tiles.cols, size)


def _location_lanes(lanes: int, f: int, t: int, ox0, wo: int):
  """(location l, map m, valid) of each of `lanes` lanes (1, lanes): lane = l*f + m, valid for
  the program's t locations ox0 + l that lie in the row. With t = 1, l is the constant 0 and m
  the bare lane iota (no div/rem: the kernels then lower to the one-location code measured
  before cols existed)."""
  q_Q = lax.broadcasted_iota(jnp.int32, (1, lanes), 1)
  if t == 1:  # the program's one location is in the row (the grid has wo programs per row)
    return 0, q_Q, q_Q < f
  l_Q, m_Q = lax.div(q_Q, f), lax.rem(q_Q, f)  # lanes >= 0: truncation is floor; Triton sees
  # contiguity / constancy through divsi / remsi by a constant, not through jnp's floor fix-ups
  return l_Q, m_Q, (l_Q < t) & (ox0 + l_Q < wo)


def forward(x_NxHxWxC, w_HoxWoxKhxKwxCxF, strides, tiles: ops.PallasTiles | None = None):
  """y[N, Ho, Wo, F]: the untied local filter over VALID windows, `tiles.cols` adjacent output
  locations of a row per program (they share one load of their input span)."""
  n, h, wd, c = x_NxHxWxC.shape
  ho, wo, kh, kw, _, f = w_HoxWoxKhxKwxCxF.shape
  sy, sx = strides
  _check_size("pallas local forward", x=x_NxHxWxC.shape, w=w_HoxWoxKhxKwxCxF.shape,
              y=(x_NxHxWxC.shape[0], *w_HoxWoxKhxKwxCxF.shape[:2], w_HoxWoxKhxKwxCxF.shape[-1]))
  tiles = _tiles(tiles)
  bn, kc, t = _batch_tile(n, tiles), kw * c, _cols(tiles, wo)
  span = ((t - 1) * sx + kw) * c  # input lanes the program's t windows cover in one row
  shapes = ops.pallas_tile_shapes(c, f, kw, sx, t, bn)
  (_, kl), (_, fl) = shapes["input"], shapes["weight"]
  _check_tiles("pallas local forward", tiles, input=shapes["input"], weight=shapes["weight"])

  def kernel(ids, load, x_ref, w_ref):
    b, tile, oy = ids
    ox0 = tile * t
    n_B = b * bn + lax.broadcasted_iota(jnp.int32, (bn, 1), 0)
    k_K = lax.broadcasted_iota(jnp.int32, (1, kl), 1)
    ok_B = n_B < n
    # Lanes of the product: (location l, map m) in columns; the window lane of span lane k
    # is k - l*sx*c, outside [0, kc) the weight is 0 (another location's window).
    l_Q, m_Q, loc_ok_Q = _location_lanes(fl, f, t, ox0, wo)
    kk_KxQ = k_K.T - l_Q * (sx * c) if t > 1 else k_K.T  # t = 1: [kl, 1], broadcast
    w_mask = loc_ok_Q & (kk_KxQ < kc) if t == 1 else loc_ok_Q & (kk_KxQ >= 0) & (kk_KxQ < kc)
    x_mask = ok_B & (k_K < span)
    if t > 1:  # a part-filled last tile's span can pass the row's end; one window cannot
      x_mask = x_mask & (ox0 * sx * c + k_K < wd * c)
    loc_Q = oy * wo + ox0 + l_Q

    def row(i, acc_BxQ):
      x_idx = (n_B * h + oy * sy + i) * (wd * c) + ox0 * sx * c + k_K
      w_idx = ((loc_Q * kh + i) * kc + kk_KxQ) * f + m_Q
      return acc_BxQ + _dot(load(x_ref, x_idx, x_mask), load(w_ref, w_idx, w_mask))

    acc = _unrolled(kh, row, jnp.zeros((bn, fl), jnp.float32))
    return (n_B * (ho * wo) + loc_Q) * f + m_Q, acc, ok_B & loc_ok_Q

  y = _run(kernel, n * ho * wo * f, x_NxHxWxC.dtype, (pl.cdiv(n, bn), pl.cdiv(wo, t), ho),
            x_NxHxWxC, w_HoxWoxKhxKwxCxF, num_warps=tiles.warps)
  return y.reshape(n, ho, wo, f)


def input_grad(g_NxHoxWoxF, w_HoxWoxKhxKwxCxF, x_shape, strides,
               tiles: ops.PallasTiles | None = None):
  """dx[N, H, W, C] = the transpose of `forward` applied to g (the untied decoder);
  `tiles.cols` adjacent input columns of a row per program."""
  n, h, wd, c = x_shape
  ho, wo, kh, kw, _, f = w_HoxWoxKhxKwxCxF.shape
  sy, sx = strides
  _check_size("pallas local input gradient", dx=x_shape, w=w_HoxWoxKhxKwxCxF.shape,
              g=g_NxHoxWoxF.shape)
  tiles = _tiles(tiles)
  bn, t = _batch_tile(n, tiles), _cols(tiles, wd)
  shapes = ops.pallas_tile_shapes(c, f, kw, sx, t, bn)
  jf, cl = shapes["decoder weight"]  # lanes (window q, map m) x output lanes (column u, channel cc)
  nq = (t + kw - 2) // sx + 1  # windows that cover any of the t columns
  fp = _lanes(f, 1)  # map lanes per window
  _check_tiles("pallas local input gradient", tiles, gradient=shapes["gradient"],
               weight=shapes["decoder weight"])

  def kernel(ids, load, g_ref, w_ref):
    b, tile, r = ids
    col0 = tile * t
    top = (col0 + t - 1) // sx  # the rightmost window that can cover one of the columns
    n_B = b * bn + lax.broadcasted_iota(jnp.int32, (bn, 1), 0)
    v_V = lax.broadcasted_iota(jnp.int32, (1, cl), 1)
    if t == 1:  # one column (in the row: the grid has wd programs per row): lane v is channel v
      u_V, cc_V, out_ok_V = 0, v_V, v_V < c
    else:
      u_V, cc_V = lax.div(v_V, c), lax.rem(v_V, c)
      out_ok_V = (u_V < t) & (col0 + u_V < wd)

    def lanes(shape, axis):
      """Lane (q, m) along `axis`: window ox = top - q, map m."""
      q_m = lax.broadcasted_iota(jnp.int32, shape, axis)
      q, m = lax.div(q_m, fp), lax.rem(q_m, fp)
      ox = top - q
      return ox, m, (q < nq) & (m < f) & (ox >= 0) & (ox < wo)

    ox_J, m_J, ok_J = lanes((1, jf), 1)  # as the product's contraction columns (of g)
    ox_Jc, m_Jc, ok_Jc = lanes((jf, 1), 0)  # and rows (of w)
    j_JxV = col0 + u_V - ox_Jc * sx  # the window column that input column u is in
    if t == 1:  # [jf, 1]: out_ok_V joins per row (below), so no [jf, cl] mask stays live
      w_ok = ok_Jc & (j_JxV >= 0) & (j_JxV < kw)
    else:
      w_ok = ok_Jc & out_ok_V & (j_JxV >= 0) & (j_JxV < kw)

    def window_row(p, acc_BxV):
      oy = r // sy - p
      i = r - oy * sy
      row_ok = (oy >= 0) & (oy < ho) & (i < kh)
      g_idx = ((n_B * ho + oy) * wo + ox_J) * f + m_J
      w_idx = ((((oy * wo + ox_Jc) * kh + i) * kw + j_JxV) * c + cc_V) * f + m_Jc
      g_BxJ = load(g_ref, g_idx, ok_J & row_ok & (n_B < n))
      w_ok_row = w_ok & row_ok
      if t == 1:  # w_ok is [jf, 1] (u is 0): the channel lanes' mask joins here, so that no
        w_ok_row = w_ok_row & out_ok_V  # [jf, cl] mask stays live across the unrolled rows
      w_JxV = load(w_ref, w_idx, w_ok_row)
      return acc_BxV + _dot(g_BxJ, w_JxV)

    acc = _unrolled(-(-kh // sy), window_row, jnp.zeros((bn, cl), jnp.float32))
    return ((n_B * h + r) * wd + col0 + u_V) * c + cc_V, acc, (n_B < n) & out_ok_V

  dx = _run(kernel, n * h * wd * c, g_NxHoxWoxF.dtype, (pl.cdiv(n, bn), pl.cdiv(wd, t), h),
             g_NxHoxWoxF, w_HoxWoxKhxKwxCxF, num_warps=tiles.warps)
  return dx.reshape(x_shape)


def weight_grad(x_NxHxWxC, g_NxHoxWoxF, w_shape, strides, tiles: ops.PallasTiles | None = None):
  """dw[Ho, Wo, kh, kw, C, F] = sum over the batch of patches(x) (x) g; `tiles.cols` adjacent
  output locations of a row per program (they share one load of their input span)."""
  n, h, wd, c = x_NxHxWxC.shape
  ho, wo, kh, kw, _, f = w_shape
  sy, sx = strides
  _check_size("pallas local weight gradient", x=x_NxHxWxC.shape, dw=w_shape, g=g_NxHoxWoxF.shape)
  tiles = _tiles(tiles)
  bn, kc, t = _batch_tile(n, tiles), kw * c, _cols(tiles, wo)
  span = ((t - 1) * sx + kw) * c
  shapes = ops.pallas_tile_shapes(c, f, kw, sx, t, bn)
  (_, kl), (_, fl) = shapes["input"], shapes["weight"]
  _check_tiles("pallas local weight gradient", tiles, input=shapes["input"], weight=shapes["weight"])
  nb = pl.cdiv(n, bn)

  def kernel(ids, load, x_ref, g_ref):
    i, tile, oy = ids
    ox0 = tile * t
    n_B = lax.broadcasted_iota(jnp.int32, (bn, 1), 0)
    k_K = lax.broadcasted_iota(jnp.int32, (1, kl), 1)
    l_Q, m_Q, loc_ok_Q = _location_lanes(fl, f, t, ox0, wo)
    loc_Q = oy * wo + ox0 + l_Q
    x_ok = k_K < span
    if t > 1:  # a part-filled last tile's span can pass the row's end; one window cannot
      x_ok = x_ok & (ox0 * sx * c + k_K < wd * c)

    def batch(b, acc_KxQ):
      nn_B = b * bn + n_B
      x_idx = (nn_B * h + oy * sy + i) * (wd * c) + ox0 * sx * c + k_K
      g_idx = (nn_B * (ho * wo) + loc_Q) * f + m_Q
      x_BxK = load(x_ref, x_idx, (nn_B < n) & x_ok)
      g_BxQ = load(g_ref, g_idx, (nn_B < n) & loc_ok_Q)
      return acc_KxQ + _dot(x_BxK, g_BxQ, trans_a=True)

    acc = _unrolled(nb, batch, jnp.zeros((kl, fl), jnp.float32))
    # Span lane k of location l is its window lane k - l*sx*c: each weight is one lane's.
    kk_KxQ = k_K.T - l_Q * (sx * c) if t > 1 else k_K.T  # t = 1: [kl, 1], broadcast
    return (((loc_Q * kh + i) * kc + kk_KxQ) * f + m_Q, acc,
            loc_ok_Q & (kk_KxQ >= 0) & (kk_KxQ < kc) if t > 1 else loc_ok_Q & (kk_KxQ < kc))

  dw = _run(kernel, ho * wo * kh * kw * c * f, g_NxHoxWoxF.dtype, (kh, pl.cdiv(wo, t), ho),
             x_NxHxWxC, g_NxHoxWoxF, num_warps=tiles.warps)
  return dw.reshape(w_shape)
