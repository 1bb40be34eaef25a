"""Windows of an array and their transpose: the patch gather behind untied local filtering.

`gather_windows` cuts n windows of size k, stride s along one axis; `fold_windows` sums windows
back (its transpose). Each is the other's VJP, so gradients of any order stay dense gathers and
shifted adds rather than XLA's serial scatter-add.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def output_size(n: int, k: int, s: int) -> int:
  """Number of VALID windows of size k, stride s, along an axis of length n."""
  return (n - k) // s + 1


def _gather_windows(x, axis: int, k: int, s: int, n: int):
  """x[..., L, ...] -> [..., n, k, ...]: element (o, j) is x[o*s + j] along `axis`."""
  idx = (np.arange(n)[:, None] * s + np.arange(k)[None, :]).reshape(-1)
  y = jnp.take(x, idx, axis=axis, unique_indices=False, indices_are_sorted=True, mode="clip")
  return y.reshape(x.shape[:axis] + (n, k) + x.shape[axis + 1:])


def _fold_windows(p, axis: int, k: int, s: int, length: int):
  """Transpose of `_gather_windows`: [..., n, k, ...] -> [..., length, ...] by summing windows.

  Window offset j = a*s + r lands at position (o + a)*s + r, so the fold is a sum over the
  ceil(k/s) values of `a` of shifted (padded) copies: dense adds, no scatter.
  """
  n = p.shape[axis]
  a_count = -(-k // s)
  pads = [(0, 0)] * p.ndim
  pads[axis + 1] = (0, a_count * s - k)
  p = jnp.pad(p, pads)
  p = p.reshape(p.shape[:axis] + (n, a_count, s) + p.shape[axis + 2:])
  acc = None
  for a in range(a_count):  # loop over kernel offsets (<= k), never over locations
    q = lax.index_in_dim(p, a, axis + 1, keepdims=False)  # [..., n, s, ...]
    shift = [(0, 0)] * q.ndim
    shift[axis] = (a, a_count - 1 - a)
    q = jnp.pad(q, shift)
    acc = q if acc is None else acc + q
  out = acc.reshape(acc.shape[:axis] + ((n + a_count - 1) * s,) + acc.shape[axis + 2:])
  m = out.shape[axis]
  if m >= length:
    return lax.slice_in_dim(out, 0, length, axis=axis)
  tail = [(0, 0)] * out.ndim
  tail[axis] = (0, length - m)
  return jnp.pad(out, tail)


def _mutual_transposes(f, f_t):
  """Custom-VJP versions of two linear maps `f(x, axis, k, s, size)` that are each other's
  transpose: the VJP of one is the other, called with the primal input's length along `axis`."""
  pair = [jax.custom_vjp(f, nondiff_argnums=(1, 2, 3, 4)), jax.custom_vjp(f_t, nondiff_argnums=(1, 2, 3, 4))]
  for op, impl, t in ((pair[0], f, pair[1]), (pair[1], f_t, pair[0])):
    op.defvjp(lambda x, axis, k, s, size, impl=impl: (impl(x, axis, k, s, size), x.shape[axis]),
              lambda axis, k, s, size, length, g, t=t: (t(g, axis, k, s, length),))
  return tuple(pair)


gather_windows, fold_windows = _mutual_transposes(_gather_windows, _fold_windows)


def extract_patches(x_NxHxWxC, kernel: Sequence[int], strides: Sequence[int]):
  """All VALID kh x kw windows: x[N,H,W,C] -> p[N, Ho, kh, Wo, kw, C]."""
  (kh, kw), (sy, sx) = kernel, strides
  _, h, w, _ = x_NxHxWxC.shape
  ho, wo = output_size(h, kh, sy), output_size(w, kw, sx)
  p = gather_windows(x_NxHxWxC, 1, kh, sy, ho)  # N, Ho, kh, W, C
  return gather_windows(p, 3, kw, sx, wo)  # N, Ho, kh, Wo, kw, C


def fold_patches(p_NxHoxKhxWoxKwxC, in_hw: Sequence[int], strides: Sequence[int]):
  """Transpose of `extract_patches`: sums every window back into an [N, H, W, C] image."""
  _, ho, kh, wo, kw, _ = p_NxHoxKhxWoxKwxC.shape
  (sy, sx), (h, w) = strides, in_hw
  # Fold first the axis whose fold shrinks the data more (windows x kernel -> length): the other
  # fold then works on less. With one output row per block (the Le-2012 layer: 18x18 windows at
  # stride 2) the rows do not shrink at all and the columns 8x, and folding columns first took
  # the input gradient from 142 ms to 59 ms (BENCHMARKS.md, "The local layer on CPU, 2026-12-01").
  if wo * kw / w > ho * kh / h:
    x = fold_windows(p_NxHoxKhxWoxKwxC, 3, kw, sx, w)  # N, Ho, kh, W, C
    return fold_windows(x, 1, kh, sy, h)
  x = fold_windows(p_NxHoxKhxWoxKwxC, 1, kh, sy, h)  # N, H, Wo, kw, C
  return fold_windows(x, 2, kw, sx, w)
