"""Pure functional ops of the Le et al. (2012) autoencoder: untied local filtering and its
transpose, L2 pooling and local contrast normalisation.

Shapes are NHWC. Untied weights are laid out `w[Ho, Wo, kh, kw, C, F]`: output location first, so
a spatial tile of outputs owns a contiguous block of weights.

The local filter is a patch gather plus a location-batched contraction, run block by block over
output rows so the patches never exist whole. The patch transpose (the input gradient, and the
untied decoder) is a sum of ceil(k/s) shifted copies per axis rather than XLA's serial
scatter-add. Nothing loops over output locations, so compile time does not grow with the output
grid.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lcnet.config import pallas_tiles_problem
from lcnet.patches import fold_patches, output_size

Padding = str | Sequence[tuple[int, int]]
F32 = jnp.float32  # every product of the local op accumulates in float32, whatever its dtype


def resolve_padding(padding: Padding, in_hw: Sequence[int], kernel: Sequence[int],
                    strides: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
  """'VALID' | 'SAME' | ((top, bottom), (left, right)) -> explicit per-axis pads."""
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return ((0, 0), (0, 0))
    if mode == "SAME":
      pads = []
      for n, k, s in zip(in_hw, kernel, strides):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
      return tuple(pads)
    raise ValueError(f"padding must be 'VALID', 'SAME' or ((top, bottom), (left, right)); got {padding!r}")
  pads = tuple((int(a), int(b)) for a, b in padding)
  if len(pads) != 2 or any(a < 0 or b < 0 for a, b in pads):
    raise ValueError(f"explicit padding must be two non-negative (before, after) pairs; got {padding!r}")
  return pads


def _check_local(x_shape, w_shape, strides, where: str):
  if len(x_shape) != 4 or len(w_shape) != 6:
    raise ValueError(f"{where}: expected x[N,H,W,C] and w[Ho,Wo,kh,kw,C,F]; got x{tuple(x_shape)}, "
                     f"w{tuple(w_shape)}")
  if len(strides) != 2 or min(strides) < 1:
    raise ValueError(f"{where}: strides must be two positive ints; got {strides!r}")


def local_filter(x_NxHxWxC, w_HoxWoxKhxKwxCxF, strides: Sequence[int] = (1, 1),
                 padding: Padding = "VALID", tuning: LocalTuning | None = None):
  """Untied local filtering: y[n,oy,ox,f] = sum_{i,j,c} x[n, oy*sy+i, ox*sx+j, c] w[oy,ox,i,j,c,f].

  Every output location has its own filter bank. Windows are VALID over the (optionally padded)
  input, so Ho = (H + pads - kh) // sy + 1. `tuning`: how to run it (None: the default
  backend's `default_tuning()`); it changes speed and summation order, not the result.
  """
  strides = tuple(int(s) for s in strides)
  _check_local(x_NxHxWxC.shape, w_HoxWoxKhxKwxCxF.shape, strides, "local_filter")
  ho, wo, kh, kw, c, _ = w_HoxWoxKhxKwxCxF.shape
  pads = resolve_padding(padding, x_NxHxWxC.shape[1:3], (kh, kw), strides)
  x = jnp.pad(x_NxHxWxC, ((0, 0), *pads, (0, 0))) if any(map(any, pads)) else x_NxHxWxC
  h, w = x.shape[1:3]
  want = (output_size(h, kh, strides[0]), output_size(w, kw, strides[1]), c)
  if (ho, wo, x.shape[3]) != want:
    raise ValueError(f"local_filter: weights {w_HoxWoxKhxKwxCxF.shape} do not fit input "
                     f"{x_NxHxWxC.shape} (padded to {x.shape}) with strides {strides}: expected "
                     f"w[{want[0]}, {want[1]}, {kh}, {kw}, {want[2]}, F]")
  return _local_filter_valid(x, w_HoxWoxKhxKwxCxF, strides, _tuning(tuning))


# Untied filtering runs over blocks of output rows (lax.scan): per block, one gather builds the
# patches as [locations, N, kh*kw*C] (the weights' contraction order), the forward is a
# location-batched matmul, the weight gradient a broadcast-multiply-sum over the small batch, and
# the input gradient folds the block's patch gradient into its rows of dx. Patches are recomputed
# in the backward pass instead of saved, so the working set is one cache-sized block.
#
# The best block size and contraction form depend on the backend (BENCHMARKS.md): CPUs want
# cache-sized blocks and broadcast-multiply-sums for the small-batch products; GPUs want few,
# large blocks (each scan step is a kernel launch) and batched matmuls. `DEFAULT_TUNING` holds
# the measured defaults per platform; a config's `model.local_op` overrides them
# (`lcnet.config.LocalOpConfig`), so the config printed and saved is the one that ran.
@dataclasses.dataclass(frozen=True)
class PallasTiles:
  """How the Pallas kernels split their work into programs: speed, never the result (for finite
  inputs: a tile's masked lanes multiply by zero, so an inf or NaN reaches its tile-mates)."""
  cols: int = 1  # adjacent columns of a row per program
  warps: int = 2  # Triton warps per program: a power of two <= 32
  batch: int = 32  # most examples per program: a power of two >= 16 (Triton's tiles)

  def __post_init__(self):
    if problem := pallas_tiles_problem(self.cols, self.warps, self.batch):
      raise ValueError(f"Pallas tiles: {problem}")


@dataclasses.dataclass(frozen=True)
class LocalTuning:
  block_bytes: int  # patch bytes per block of output rows (the XLA contractions only)
  contract: str  # "broadcast" (multiply-sum over the small N / F), "einsum" (batched matmuls) or
  # "pallas" (the fused kernels of `lcnet.pallas_local`: Triton on GPUs, interpret mode on CPUs)
  pallas: PallasTiles = PallasTiles()  # the Pallas kernels only

  def __post_init__(self):
    if self.contract not in CONTRACTIONS or not isinstance(self.block_bytes, int) or self.block_bytes < 1:
      raise ValueError(f"local-op tuning: contract must be one of {CONTRACTIONS} and block_bytes a "
                       f"positive int; got {self.contract!r}, {self.block_bytes!r}")


CONTRACTIONS = ("broadcast", "einsum", "pallas")
PALLAS_MAX_ELEMENTS = 2**31 - 1  # the Pallas kernels index every operand with int32
# GPU: the Pallas kernels, measured faster than the batched matmuls on an H200 (BENCHMARKS.md,
# "Pallas local kernels"); `model.local_tuning` falls back to "einsum" for a layer too large for
# their int32 indexing. block_bytes then only matters to that fallback.
# 4 columns, 2 warps and up to 32 examples per program: the fastest tiles of the Le-2012 layer 1
# on an H200 (BENCHMARKS.md, "The GPU suite on a second H200 loan": 2.6x one column's fwd+bwd);
# `model.local_tuning` takes 1 column for a model whose 4-column tiles would pass
# PALLAS_DEFAULT_TILE elements.
DEFAULT_TUNING = {"cpu": LocalTuning(2 << 20, "broadcast"),
                  "gpu": LocalTuning(4 << 30, "pallas", PallasTiles(cols=4, warps=2, batch=32))}
# The most elements of one on-chip tile (`pallas_tile_shapes`) where the default columns apply:
# the largest tile the one-column kernels build at the Le-2012 layers (their input gradient's
# [32, 256]), which the H200 ran; the 4-column tiles of the Le-2012 layers stay within it.
PALLAS_DEFAULT_TILE = 2**13


def pallas_lanes(n: int, least: int = 16) -> int:
  """The power of two >= max(n, least): a Triton tile dimension."""
  return max(least, 1 << max(n - 1, 0).bit_length())


def pallas_tile_shapes(c: int, f: int, kw: int, sx: int, cols: int, batch: int) -> dict:
  """{name: [rows, lanes]} of the on-chip tiles the Pallas kernels build for a layer of C input
  channels, F maps and kw-wide windows at column stride sx, with `cols` columns and `batch`
  examples per program: the forward's and weight gradient's input span and weights, and the
  input gradient's map gradients and weights (`lcnet.pallas_local`)."""
  span_lanes = pallas_lanes(((cols - 1) * sx + kw) * c)  # the input the cols windows cover
  windows = (cols + kw - 2) // sx + 1  # the windows that cover any of cols input columns
  window_lanes = pallas_lanes(windows * pallas_lanes(f, 1))
  return {"input": (batch, span_lanes), "weight": (span_lanes, pallas_lanes(cols * f)),
          "gradient": (batch, window_lanes), "decoder weight": (window_lanes, pallas_lanes(cols * c))}


def default_tuning(backend: str | None = None) -> LocalTuning:
  """The measured tuning for `backend` (default: jax's default backend)."""
  return DEFAULT_TUNING.get(backend or jax.default_backend(), DEFAULT_TUNING["gpu"])


def _tuning(tuning: LocalTuning | None) -> LocalTuning:
  return default_tuning() if tuning is None else tuning


def _row_blocks(x_shape, itemsize, w_shape, sy, tuning: LocalTuning):
  """(rows per block, number of blocks, input rows a block reads); rows divides Ho."""
  ho, wo, kh, kw, c, _ = w_shape
  per_row = wo * x_shape[0] * kh * kw * c * itemsize
  budget = max(tuning.block_bytes, per_row)
  rows = max(d for d in range(1, ho + 1) if ho % d == 0 and d * per_row <= budget)
  return rows, ho // rows, (rows - 1) * sy + kh


def _block_patches(x_NxSpanxWxC, kernel, strides, rows: int, wo: int):
  """Windows of `rows` output rows: [N, span, W, C] -> [rows*Wo, N, kh*kw*C] in one gather."""
  (kh, kw), (sy, sx) = kernel, strides
  n, _, _, c = x_NxSpanxWxC.shape
  r = np.arange(rows)[:, None] * sy + np.arange(kh)[None, :]
  q = np.arange(wo)[:, None] * sx + np.arange(kw)[None, :]
  idx = np.stack(np.broadcast_arrays(r[:, None, :, None], q[None, :, None, :]), -1).astype(np.int32)
  dn = lax.GatherDimensionNumbers(offset_dims=(2, 5), collapsed_slice_dims=(1, 2), start_index_map=(1, 2))
  p = lax.gather(x_NxSpanxWxC, jnp.asarray(idx), dn, (n, 1, 1, c), indices_are_sorted=True,
                 unique_indices=False, mode="clip")  # rows, Wo, N, kh, kw, C
  return p.reshape(rows * wo, n, kh * kw * c)


def _local_filter_blocks(x, w, strides, tuning):
  if tuning.contract == "pallas":
    from lcnet import pallas_local  # only here: the XLA path never needs Pallas's Triton backend
    return pallas_local.forward(x, w, strides, tuning.pallas)
  ho, wo, kh, kw, c, f = w.shape
  n = x.shape[0]
  rows, nb, span = _row_blocks(x.shape, x.dtype.itemsize, w.shape, strides[0], tuning)
  w_BxLxKxF = w.reshape(nb, rows * wo, kh * kw * c, f)

  def block(_, b_w):
    b, w_LxKxF = b_w
    x_span = lax.dynamic_slice_in_dim(x, b * rows * strides[0], span, axis=1)
    p_LxNxK = _block_patches(x_span, (kh, kw), strides, rows, wo)
    y_LxNxF = jnp.einsum("lnk,lkf->lnf", p_LxNxK, w_LxKxF, preferred_element_type=F32)
    return None, y_LxNxF.astype(x.dtype)  # rounded per block: no float32 copy of the whole

  _, y_BxLxNxF = lax.scan(block, None, (jnp.arange(nb), w_BxLxKxF))
  return y_BxLxNxF.reshape(ho, wo, n, f).transpose(2, 0, 1, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _local_filter_valid(x, w, strides, tuning):
  return _local_filter_blocks(x, w, strides, tuning)


def _local_filter_fwd(x, w, strides, tuning):
  return _local_filter_blocks(x, w, strides, tuning), (x, w)


def _local_filter_vjp_blocks(x_shape, x, w, g_NxHoxWoxF, strides, tuning, want_dx: bool,
                             want_dw: bool):
  """Block by block: dx = fold(g . w) (if want_dx) and dw = sum_n patches(x) g (if want_dw).

  dx is also the untied decoder's output for responses g, so the decoder shares this loop."""
  if tuning.contract == "pallas":
    from lcnet import pallas_local
    tiles = tuning.pallas
    return (pallas_local.input_grad(g_NxHoxWoxF, w, x_shape, strides, tiles) if want_dx else None,
            pallas_local.weight_grad(x, g_NxHoxWoxF, w.shape, strides, tiles).astype(w.dtype)
            if want_dw else None)
  ho, wo, kh, kw, c, f = w.shape
  n = x_shape[0]
  rows, nb, span = _row_blocks(x_shape, w.dtype.itemsize, w.shape, strides[0], tuning)
  einsum = tuning.contract == "einsum"
  w_BxLxKxF = w.reshape(nb, rows * wo, kh * kw * c, f)
  g_BxLxNxF = g_NxHoxWoxF.transpose(1, 2, 0, 3).reshape(nb, rows * wo, n, f)

  def block(dx, b_w_g):
    b, w_LxKxF, g_LxNxF = b_w_g
    row0 = b * rows * strides[0]
    dw_LxKxF = None
    if want_dw:
      x_span = lax.dynamic_slice_in_dim(x, row0, span, axis=1)
      p_LxNxK = _block_patches(x_span, (kh, kw), strides, rows, wo)
      if einsum:
        dw_LxKxF = jnp.einsum("lnk,lnf->lkf", p_LxNxK, g_LxNxF, preferred_element_type=F32)
      else:  # over the small N
        dw_LxKxF = jnp.sum(p_LxNxK.astype(F32)[:, :, :, None] * g_LxNxF.astype(F32)[:, :, None, :],
                           axis=1)
    if want_dx:
      if einsum:
        dp_LxNxK = jnp.einsum("lnf,lkf->lnk", g_LxNxF, w_LxKxF, preferred_element_type=F32)
      else:  # over the small F
        dp_LxNxK = jnp.sum(g_LxNxF.astype(F32)[:, :, None, :] * w_LxKxF.astype(F32)[:, None],
                           axis=3)
      dp = dp_LxNxK.reshape(rows, wo, n, kh, kw, c).transpose(2, 0, 3, 1, 4, 5)  # N,rows,kh,Wo,kw,C
      dx_span = fold_patches(dp, (span, x_shape[2]), strides)
      dx_span = lax.dynamic_slice_in_dim(dx, row0, span, axis=1) + dx_span
      dx = lax.dynamic_update_slice_in_dim(dx, dx_span, row0, axis=1)
    return dx, None if dw_LxKxF is None else dw_LxKxF.astype(w.dtype)  # rounded per block

  # float32 zeros that vary over every mesh axis g and w vary over (scan carries in shard_map)
  dx0 = ((jnp.zeros_like(g_NxHoxWoxF, shape=x_shape) + jnp.zeros_like(w, shape=())).astype(F32)
         if want_dx else None)
  dx, dw = lax.scan(block, dx0, (jnp.arange(nb), w_BxLxKxF, g_BxLxNxF))
  return (dx.astype(g_NxHoxWoxF.dtype) if want_dx else None,
          dw.reshape(w.shape) if want_dw else None)


def _local_filter_bwd(strides, tuning, res, g_NxHoxWoxF):
  x, w = res
  return _local_filter_vjp_blocks(x.shape, x, w, g_NxHoxWoxF, strides, tuning, True, True)


_local_filter_valid.defvjp(_local_filter_fwd, _local_filter_bwd)


# The untied decoder is the local filter's input gradient with its own weights: the same block
# loop forward; its VJP is a local filter of the cotangent (dy) and the weight-gradient loop (dw).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _decode_valid(y, w, x_shape, strides, tuning):
  return _local_filter_vjp_blocks(x_shape, None, w, y, strides, tuning, True, False)[0]


def _decode_fwd(y, w, x_shape, strides, tuning):
  return _decode_valid(y, w, x_shape, strides, tuning), (y, w)


def _decode_bwd(x_shape, strides, tuning, res, g_NxHxWxC):
  y, w = res
  dy = _local_filter_valid(g_NxHxWxC, w, strides, tuning)
  dw = _local_filter_vjp_blocks(x_shape, g_NxHxWxC, w, y, strides, tuning, False, True)[1]
  return dy, dw


_decode_valid.defvjp(_decode_fwd, _decode_bwd)


def local_filter_transpose(y_NxHoxWoxF, w_HoxWoxKhxKwxCxF, in_hw: Sequence[int],
                           strides: Sequence[int] = (1, 1), padding: Padding = "VALID",
                           tuning: LocalTuning | None = None):
  """The untied decoder: maps responses y[N,Ho,Wo,F] back to an image x[N,H,W,C].

  x[n, oy*sy+i, ox*sx+j, c] += sum_f y[n,oy,ox,f] w[oy,ox,i,j,c,f]; with the encoder's weights this
  is exactly the transpose (input gradient) of `local_filter`. Padded borders are cropped.
  """
  strides = tuple(int(s) for s in strides)
  ho, wo, kh, kw, c, f = w_HoxWoxKhxKwxCxF.shape
  _check_local((1, *in_hw, c), w_HoxWoxKhxKwxCxF.shape, strides, "local_filter_transpose")
  if y_NxHoxWoxF.shape[1:] != (ho, wo, f):
    raise ValueError(f"local_filter_transpose: responses {y_NxHoxWoxF.shape} do not match weights "
                     f"{w_HoxWoxKhxKwxCxF.shape}: expected y[N, {ho}, {wo}, {f}]")
  pads = resolve_padding(padding, in_hw, (kh, kw), strides)
  h, w = in_hw[0] + sum(pads[0]), in_hw[1] + sum(pads[1])
  if (output_size(h, kh, strides[0]), output_size(w, kw, strides[1])) != (ho, wo):
    raise ValueError(f"local_filter_transpose: weights {w_HoxWoxKhxKwxCxF.shape} do not fit an "
                     f"input of size {tuple(in_hw)} with strides {strides} and padding {padding!r}")
  x = _decode_valid(y_NxHoxWoxF, w_HoxWoxKhxKwxCxF, (y_NxHoxWoxF.shape[0], h, w, c), strides,
                    _tuning(tuning))
  (pt, pb), (pl, pr) = pads
  return x[:, pt:h - pb, pl:w - pr, :]


# ----------------------------------------------------------------------------------------------
# Pooling and normalisation.


def l2_pool(h_NxHxWxF, size: int | Sequence[int], strides: int | Sequence[int] = 1,
            eps: float = 1e-8, padding: Padding = "VALID"):
  """L2 pooling per map: sqrt(eps + sum of h^2 over each size x size window), in float32 for
  any input dtype (a bfloat16 input is squared and summed in float32; the output is float32)."""
  size = (size, size) if isinstance(size, int) else tuple(size)
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  if min(size) < 1 or min(strides) < 1:
    raise ValueError(f"l2_pool: size and strides must be positive; got size={size}, strides={strides}")
  pads = resolve_padding(padding, h_NxHxWxF.shape[1:3], size, strides)
  sq = lax.reduce_window(jnp.square(h_NxHxWxF.astype(F32)), 0.0, lax.add, (1, *size, 1),
                         (1, *strides, 1),
                         ((0, 0), *pads, (0, 0)))
  return jnp.sqrt(eps + sq)


def gaussian_window(size: int, sigma: float | None = None) -> np.ndarray:
  """1-D Gaussian weights of length `size` summing to 1 (sigma defaults to size / 4)."""
  sigma = size / 4.0 if sigma is None else sigma
  r = np.arange(size) - (size - 1) / 2.0
  g = np.exp(-0.5 * (r / sigma) ** 2)
  return (g / g.sum()).astype(np.float32)


def _gauss_mean(z_NxHxWx1, g):
  """Separable Gaussian-weighted mean over a SAME window, renormalised at the borders."""
  k = g.shape[0]
  pad = ((k - 1) // 2, k // 2)
  dn = ("NHWC", "HWIO", "NHWC")
  gy = jnp.asarray(g).reshape(k, 1, 1, 1)
  gx = jnp.asarray(g).reshape(1, k, 1, 1)
  blur = lambda z: lax.conv_general_dilated(
      lax.conv_general_dilated(z, gy, (1, 1), (pad, (0, 0)), dimension_numbers=dn),
      gx, (1, 1), ((0, 0), pad), dimension_numbers=dn)
  norm = blur(jnp.ones((1, *z_NxHxWx1.shape[1:3], 1), z_NxHxWx1.dtype))
  return blur(z_NxHxWx1) / norm


def local_contrast_norm(h_NxHxWxF, size: int, sigma: float | None = None, eps: float = 1e-4):
  """Local contrast normalisation (Jarrett et al. 2009), as in Le et al. (2012).

  Subtractive: v = h - G*h, with a Gaussian window over size x size positions and all maps.
  Divisive: y = v / max(c, sigma_local), sigma_local = sqrt(G*v^2), c = mean of sigma_local over
  each image. The output has the input's shape.
  """
  if size < 1:
    raise ValueError(f"local_contrast_norm: size must be positive; got {size}")
  g = gaussian_window(size, sigma)
  return lcn(h_NxHxWxF, lambda z: _gauss_mean(z, g),
             lambda sd: jnp.mean(sd, axis=(1, 2, 3), keepdims=True), eps)


def lcn(h_NxHxWxF, local_mean, image_mean, eps: float, mask=None):
  """The one definition of LCN, for whole arrays and for tiles: `local_mean(z_NxHxWx1)` is the
  Gaussian-weighted mean over each position's window (renormalised at the image border),
  `image_mean(sd_NxHxWx1)` the per-image mean [N, 1, 1, 1]; `mask` (a tile's valid positions)
  keeps phantom positions at zero."""
  mean = local_mean(jnp.mean(h_NxHxWxF, axis=-1, keepdims=True))
  v = h_NxHxWxF - mean
  if mask is not None:
    v = v * mask
  sd = jnp.sqrt(local_mean(jnp.mean(jnp.square(v), axis=-1, keepdims=True)) + 1e-12)
  y = v / jnp.maximum(jnp.maximum(sd, image_mean(sd)), eps)
  return y if mask is None else y * mask
