"""The network's units: inputs as the model sees them, every layer's output, one unit's response,
its optimal stimulus and its invariance to shifts, zooms and rotations (Le et al. 2012, fig. 4).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcnet import compiled, data, faces


def normalise(images, size: int | tuple[int, int], channels: int, whiten: bool = False) -> np.ndarray:
  """Any batch of images (uint8 or float, [N, H, W(, C)], any size) as the model sees them:
  resized to `size`, grey or RGB, whitened if the model was trained on whitened inputs
  (`model.whiten_input`), each standardised to zero mean and unit variance."""
  from PIL import Image
  x = np.asarray(images)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  x = x[..., None] if x.ndim == 3 else x
  if x.shape[-1] not in (1, 3, 4):
    raise ValueError(f"images must be [N, H, W] or [N, H, W, 1|3|4], got {x.shape}")
  x = x[..., :3]
  if channels == 1 and x.shape[-1] == 3:
    x = x @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
  elif channels == 3 and x.shape[-1] == 1:
    x = np.repeat(x, 3, -1)
  h, w = (size, size) if isinstance(size, int) else size
  if x.shape[1:3] != (h, w):
    filt = Image.BOX if x.shape[1] > h else Image.BILINEAR
    x = np.stack([np.stack([np.asarray(Image.fromarray(im[..., c], mode="F").resize((w, h), filt))
                            for c in range(x.shape[-1])], -1) for im in x])
  return data.standardise(data.whiten(x) if whiten else x)


_outputs = compiled.jit(lambda state, x, gdef: nnx.merge(gdef, state)(x), static_argnums=2)


def layer_outputs(net, x_NxHxWxC: np.ndarray, batch: int = 64) -> list[np.ndarray]:
  """Every layer's output [N, H, W, F] for a batch of normalised images, as numpy, computed in
  chunks of `batch` (the last one padded, so one compiled shape serves every call)."""
  gdef, state = nnx.split(net)
  n = len(x_NxHxWxC)
  b = min(batch, n)
  parts = []
  for i in range(0, n, b):
    x = x_NxHxWxC[i:i + b]
    pad = b - len(x)
    x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    parts.append([np.asarray(o)[:b - pad] for o in _outputs(state, jnp.asarray(x), gdef)])
  return [np.concatenate(p) for p in zip(*parts)]


def unit_at(index: int, shapes: list[tuple[int, int, int]]) -> dict[str, Any]:
  """Column `index` of the layers' outputs flattened and concatenated (shapes [H, W, F] per
  layer) -> {layer (from 1), location [y, x], map}."""
  for layer, shape in enumerate(shapes):
    n = int(np.prod(shape))
    if index < n:
      yy, xx, ff = np.unravel_index(index, shape)
      return {"layer": layer + 1, "location": [int(yy), int(xx)], "map": int(ff)}
    index -= n
  raise IndexError("unit index beyond the layers' outputs")


def unit_response(net, unit: dict, x_NxHxWxC: np.ndarray, batch: int = 64) -> np.ndarray:
  """The unit's raw activation (before its sign) for normalised images: [N]."""
  (y, x), f, layer = unit["location"], unit["map"], unit["layer"]
  return layer_outputs(net, x_NxHxWxC, batch)[layer - 1][:, y, x, f]


# ------------------------------------------------------------------------------------------------
# What the chosen unit does.


def optimal_stimulus(net, unit: dict, steps: int = 200, starts: int = 4, lr: float = 0.1,
                     seed: int = 0) -> dict[str, Any]:
  """argmax_x sign * unit(x) with x zero-mean and ||x|| = sqrt(H W C) (a standardised image's
  norm), by projected gradient ascent from random starts: {"image" [H, W, C], "activation"}."""
  (yy, xx), ff, layer, sign = unit["location"], unit["map"], unit["layer"], unit.get("sign", 1.0)
  gdef, state = nnx.split(net)
  shape = (starts, *net.image_size, net.channels)
  norm = np.sqrt(np.prod(shape[1:]))

  def act(x):
    return sign * nnx.merge(gdef, state)(x, num_layers=layer)[layer - 1][:, yy, xx, ff]

  def project(x):
    x = x - x.mean(axis=(1, 2, 3), keepdims=True)
    return x * norm / jnp.sqrt(jnp.sum(x * x, axis=(1, 2, 3), keepdims=True))

  def step(x, _):
    g = jax.grad(lambda x: jnp.sum(act(x)))(x)
    g = g / (jnp.sqrt(jnp.sum(g * g, axis=(1, 2, 3), keepdims=True)) + 1e-12)
    return project(x + lr * norm * g), None

  ascend = compiled.jit(lambda x0: jax.lax.scan(step, x0, None, length=steps)[0])
  x = ascend(project(jax.random.normal(jax.random.key(seed), shape)))
  a = np.asarray(compiled.jit(act)(x))
  i = int(np.argmax(a))
  return {"image": np.asarray(x[i]), "activation": float(a[i]), "all_activations": a}


INVARIANCES = {"translation_x": ("dx", np.linspace(-0.25, 0.25, 9)),
               "translation_y": ("dy", np.linspace(-0.25, 0.25, 9)),
               "scale": ("scale", np.geomspace(0.5, 2.0, 9)),
               "rotation": ("angle", np.linspace(-90, 90, 13))}


def invariance(net, unit: dict, context_Nx2Sx2S: np.ndarray, channels: int,
               max_faces: int = 64, whiten: bool = False) -> dict[str, dict[str, list[float]]]:
  """Mean and std of the unit's signed response over faces as each is shifted (fraction of the
  image side), zoomed or rotated in-plane (degrees), Le et al. Fig. 4."""
  size = context_Nx2Sx2S.shape[1] // 2
  ctx = context_Nx2Sx2S[:max_faces]
  out = {}
  for name, (arg, values) in INVARIANCES.items():
    scale = size if arg in ("dx", "dy") else 1
    imgs = np.stack([faces.view(c, size, **{arg: float(v) * scale}) for v in values for c in ctx])
    r = unit.get("sign", 1.0) * unit_response(net, unit, normalise(imgs[..., None], size, channels,
                                                                      whiten))
    r = r.reshape(len(values), len(ctx))
    out[name] = {"values": values.tolist(), "mean": r.mean(1).tolist(), "std": r.std(1).tolist()}
  return out
