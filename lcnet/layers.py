"""Flax NNX modules around `lcnet.ops`: untied local filtering (encoder), its untied transpose
(decoder), L2 pooling and local contrast normalisation.

NNX, not linen: it is the API flax recommends for new code, its modules print their parameter
shapes and counts (useful in notebooks), and `nnx.split` / `nnx.merge` give the pure
(graphdef, params) form that the jitted train step and the sharded step need.
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lcnet import ops


def _normal(rngs: nnx.Rngs, shape: Sequence[int], fan_in: int, scale: float):
  return scale * jax.random.normal(rngs.params(), tuple(shape), jnp.float32) / jnp.sqrt(fan_in)


class LocalFilter(nnx.Module):
  """Untied local filtering: each output location has its own `features` filters.

  kernel[Ho, Wo, kh, kw, C, F]; optional untied bias[Ho, Wo, F].
  """

  def __init__(self, in_hw: Sequence[int], in_features: int, features: int,
               kernel_size: Sequence[int], strides: Sequence[int] = (1, 1), padding="VALID",
               use_bias: bool = False, init_scale: float = 1.0, *, rngs: nnx.Rngs):
    kh, kw = kernel_size
    self.in_hw, self.strides, self.padding = tuple(in_hw), tuple(strides), padding
    pads = ops.resolve_padding(padding, in_hw, (kh, kw), strides)
    ho = ops.output_size(in_hw[0] + sum(pads[0]), kh, strides[0])
    wo = ops.output_size(in_hw[1] + sum(pads[1]), kw, strides[1])
    if ho < 1 or wo < 1:
      raise ValueError(f"LocalFilter: a {kh}x{kw} window with strides {tuple(strides)} leaves no "
                       f"output on a {tuple(in_hw)} input; use a smaller kernel or pad the input")
    fan_in = kh * kw * in_features
    self.kernel = nnx.Param(_normal(rngs, (ho, wo, kh, kw, in_features, features), fan_in,
                                    init_scale))
    self.bias = nnx.Param(jnp.zeros((ho, wo, features), jnp.float32)) if use_bias else None

  def __call__(self, x_NxHxWxC):
    y = ops.local_filter(x_NxHxWxC, self.kernel[...], self.strides, self.padding)
    return y if self.bias is None else y + self.bias[...]


class LocalFilterTranspose(nnx.Module):
  """Untied decoder: maps responses [N, Ho, Wo, F] back to an image [N, H, W, C].

  Its kernel has the encoder's layout but its own values (Le et al.'s untied W2).
  """

  def __init__(self, in_hw: Sequence[int], in_features: int, features: int,
               kernel_size: Sequence[int], strides: Sequence[int] = (1, 1), padding="VALID",
               use_bias: bool = False, init_scale: float = 1.0, *, rngs: nnx.Rngs):
    kh, kw = kernel_size
    self.in_hw, self.strides, self.padding = tuple(in_hw), tuple(strides), padding
    pads = ops.resolve_padding(padding, in_hw, (kh, kw), strides)
    ho = ops.output_size(in_hw[0] + sum(pads[0]), kh, strides[0])
    wo = ops.output_size(in_hw[1] + sum(pads[1]), kw, strides[1])
    fan_in = features  # each reconstructed pixel sums F responses per covering location
    self.kernel = nnx.Param(_normal(rngs, (ho, wo, kh, kw, in_features, features), fan_in,
                                    init_scale / max(kh // strides[0], 1)))
    self.bias = nnx.Param(jnp.zeros((*in_hw, in_features), jnp.float32)) if use_bias else None

  def __call__(self, y_NxHoxWoxF):
    x = ops.local_filter_transpose(y_NxHoxWoxF, self.kernel[...], self.in_hw, self.strides,
                                   self.padding)
    return x if self.bias is None else x + self.bias[...]


class L2Pool(nnx.Module):
  """sqrt(eps + sum of squares over size x size windows), per map (fixed uniform H)."""

  def __init__(self, size: int, strides: int = 1, eps: float = 1e-2, padding="VALID"):
    self.size, self.strides, self.eps, self.padding = size, strides, eps, padding

  def __call__(self, h_NxHxWxF):
    return ops.l2_pool(h_NxHxWxF, self.size, self.strides, self.eps, self.padding)


class LocalContrastNorm(nnx.Module):
  """Subtractive then divisive normalisation over a Gaussian window across all maps."""

  def __init__(self, size: int, sigma: float | None = None):
    self.size, self.sigma = size, sigma

  def __call__(self, h_NxHxWxF):
    return ops.local_contrast_norm(h_NxHxWxF, self.size, self.sigma)
