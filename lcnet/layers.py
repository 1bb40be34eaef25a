"""Flax NNX modules of one autoencoder layer: untied local filtering (encoder), its untied
transpose (decoder), L2 pooling and local contrast normalisation.

Each module holds its parameters and static shapes and runs on a `grid` (`lcnet.spatial`):
`DENSE` applies `lcnet.ops` to whole arrays, a `Tiled` grid to this device's tile inside
`jax.shard_map`. NNX, not linen: it is the API flax recommends for new code, its modules print
their parameter shapes and counts (useful in notebooks), and `nnx.split` / `nnx.merge` give the
pure (graphdef, params) form that the jitted train step and the sharded step need.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lcnet import ops, spatial


def _normal(rngs: nnx.Rngs, shape: Sequence[int], fan_in: int, scale: float, dtype: str):
  w = scale * jax.random.normal(rngs.params(), tuple(shape), jnp.float32) / jnp.sqrt(fan_in)
  return w.astype(dtype)  # drawn in float32: a bfloat16 model starts from the rounded same weights


def _out_hw(in_hw, kernel, strides, what: str) -> tuple[int, int]:
  out = tuple(ops.output_size(n, k, s) for n, k, s in zip(in_hw, kernel, strides))
  if min(out) < 1:
    raise ValueError(f"{what}: a {kernel[0]}x{kernel[1]} window with strides {tuple(strides)} "
                     f"leaves no output on a {tuple(in_hw)} input; use a smaller kernel")
  return out


class _UntiedKernel(nnx.Module):
  """kernel[Ho, Wo, kh, kw, C, F] of an untied local layer on an in_hw input (VALID windows;
  output location first, so a spatial tile of outputs owns a contiguous block of weights)."""

  def __init__(self, in_hw: Sequence[int], in_features: int, features: int,
               kernel_size: Sequence[int], strides: Sequence[int], fan_in: int, scale: float,
               tuning: ops.LocalTuning | None, rngs: nnx.Rngs, param_dtype: str = "float32",
               compute_dtype: str = "float32"):
    self.in_hw, self.strides, self.tuning = tuple(in_hw), tuple(strides), tuning
    self.compute_dtype = compute_dtype
    ho, wo = _out_hw(in_hw, kernel_size, strides, type(self).__name__)
    shape = (ho, wo, *kernel_size, in_features, features)
    self.kernel = nnx.Param(_normal(rngs, shape, fan_in, scale, param_dtype))

  def _operands(self, x):
    """The input and the kernel in the compute dtype."""
    return x.astype(self.compute_dtype), self.kernel[...].astype(self.compute_dtype)


class LocalFilter(_UntiedKernel):
  """Untied local filtering (the encoder): each output location has its own `features` filters."""

  def __init__(self, in_hw: Sequence[int], in_features: int, features: int,
               kernel_size: Sequence[int], strides: Sequence[int] = (1, 1),
               init_scale: float = 1.0, tuning: ops.LocalTuning | None = None, *, rngs: nnx.Rngs,
               param_dtype: str = "float32", compute_dtype: str = "float32"):
    fan_in = kernel_size[0] * kernel_size[1] * in_features
    super().__init__(in_hw, in_features, features, kernel_size, strides, fan_in, init_scale,
                     tuning, rngs, param_dtype, compute_dtype)

  def __call__(self, x_NxHxWxC, grid=spatial.DENSE):
    return grid.local_filter(*self._operands(x_NxHxWxC), self.in_hw, self.strides, self.tuning)


class LocalFilterTranspose(_UntiedKernel):
  """Untied decoder: maps responses [N, Ho, Wo, F] back to an image [N, H, W, C]. Its kernel has
  the encoder's layout but its own values (Le et al.'s untied W2)."""

  def __init__(self, in_hw: Sequence[int], in_features: int, features: int,
               kernel_size: Sequence[int], strides: Sequence[int] = (1, 1),
               init_scale: float = 1.0, tuning: ops.LocalTuning | None = None, *, rngs: nnx.Rngs,
               param_dtype: str = "float32", compute_dtype: str = "float32"):
    # each reconstructed pixel sums F responses per covering location
    scale = init_scale / max(kernel_size[0] // strides[0], 1)
    super().__init__(in_hw, in_features, features, kernel_size, strides, features, scale, tuning,
                     rngs, param_dtype, compute_dtype)

  def __call__(self, y_NxHoxWoxF, grid=spatial.DENSE):
    return grid.local_filter_transpose(*self._operands(y_NxHoxWoxF), self.in_hw, self.strides,
                                       self.tuning)


class L2Pool(nnx.Module):
  """sqrt(eps + sum of squares over size x size windows), per map (fixed uniform H), on an
  in_hw grid of filter responses."""

  def __init__(self, in_hw: Sequence[int], size: int, strides: int = 1, eps: float = 1e-2):
    self.in_hw, self.size, self.strides, self.eps = tuple(in_hw), size, strides, eps
    self.out_hw = _out_hw(in_hw, (size, size), (strides, strides), "L2Pool")

  def __call__(self, h_NxHxWxF, grid=spatial.DENSE):
    return grid.l2_pool(h_NxHxWxF, self.in_hw, self.size, self.strides, self.eps)


class LocalContrastNorm(nnx.Module):
  """Subtractive then divisive normalisation over a Gaussian window across all maps, on an hw
  grid (`ops.lcn`)."""

  def __init__(self, hw: Sequence[int], size: int, sigma: float | None = None, eps: float = 1e-4):
    self.hw, self.size, self.sigma, self.eps = tuple(hw), size, sigma, eps

  def __call__(self, h_NxHxWxF, grid=spatial.DENSE):
    return grid.lcn(h_NxHxWxF, self.hw, self.size, self.sigma, self.eps)
