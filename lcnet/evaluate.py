"""Finding and testing the face unit (Le et al. 2012, section 4.2), honestly.

Every unit (layer, y, x, map) of every layer's output is scored by its ROC AUC for faces vs
non-faces on the selection split; the best one is chosen there, with its sign and best threshold,
and only then scored on the test split. Controls go through the same `choose`: the same
architecture with random weights, the best of N linear filters sampled from training crops, the best
single pixel, gradient energy, and logistic regression on pixels fitted to the selection split.
Everything here returns data (dicts, arrays); `lcnet.plots` draws it.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lcnet import data, faces
from lcnet import model as model_lib
from lcnet.config import Config

# ------------------------------------------------------------------------------------------------
# Scores.


def auc(scores_NxU: np.ndarray, labels_N: np.ndarray, chunk: int = 32768) -> np.ndarray:
  """ROC AUC of every column (ties count half): P(score of a face > score of a non-face)."""
  from scipy.stats import rankdata
  s = np.asarray(scores_NxU)
  s = s[:, None] if s.ndim == 1 else s.reshape(len(s), -1)
  y = np.asarray(labels_N).astype(bool)
  n1, n0 = int(y.sum()), int((~y).sum())
  if not n1 or not n0:
    raise ValueError(f"auc needs both classes; got {n1} positives and {n0} negatives")
  out = np.empty(s.shape[1])
  for a in range(0, s.shape[1], chunk):
    r = rankdata(s[:, a:a + chunk], axis=0)
    out[a:a + chunk] = (r[y].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)
  return out


def roc(scores_N: np.ndarray, labels_N: np.ndarray) -> dict[str, np.ndarray]:
  """False and true positive rates at every threshold, from the highest score down."""
  order = np.argsort(-np.asarray(scores_N), kind="stable")
  y = np.asarray(labels_N)[order].astype(bool)
  tpr = np.r_[0, np.cumsum(y) / max(y.sum(), 1)]
  fpr = np.r_[0, np.cumsum(~y) / max((~y).sum(), 1)]
  return {"fpr": fpr, "tpr": tpr}


def best_threshold(scores_N: np.ndarray, labels_N: np.ndarray) -> tuple[float, float]:
  """(threshold, accuracy) maximising the accuracy of "face if score > threshold"."""
  s = np.asarray(scores_N, np.float64)
  y = np.asarray(labels_N).astype(bool)
  v = np.unique(s)
  cand = np.r_[v[0] - 1, (v[:-1] + v[1:]) / 2, v[-1] + 1]
  order = np.argsort(s)
  ss, ys = s[order], y[order]
  below = np.searchsorted(ss, cand, side="right")  # predicted non-face
  neg_below = np.r_[0, np.cumsum(~ys)][below]
  pos_above = y.sum() - np.r_[0, np.cumsum(ys)][below]
  acc = (neg_below + pos_above) / len(s)
  i = int(np.argmax(acc))
  return float(cand[i]), float(acc[i])


def accuracy(scores_N, labels_N, threshold: float) -> float:
  return float(np.mean((np.asarray(scores_N) > threshold) == np.asarray(labels_N).astype(bool)))


def choose(sel_NxU: np.ndarray, y_sel: np.ndarray, test_NxU: np.ndarray, y_test: np.ndarray,
           both_signs: bool = True) -> dict[str, Any]:
  """The candidate (column) with the best selection AUC, its sign and its selection-split
  threshold, scored on the test split."""
  sel_NxU = np.asarray(sel_NxU).reshape(len(sel_NxU), -1)
  test_NxU = np.asarray(test_NxU).reshape(len(test_NxU), -1)
  a = auc(sel_NxU, y_sel)
  signed = np.maximum(a, 1 - a) if both_signs else a
  j = int(np.argmax(signed))
  sign = 1.0 if a[j] >= 0.5 or not both_signs else -1.0
  thr, sel_acc = best_threshold(sign * sel_NxU[:, j], y_sel)
  t = sign * test_NxU[:, j]
  return {"index": j, "sign": sign, "candidates": sel_NxU.shape[1],
          "selection_auc": float(signed[j]), "selection_accuracy": sel_acc, "threshold": thr,
          "test_auc": float(auc(t, y_test)[0]), "test_accuracy": accuracy(t, y_test, thr),
          "test_scores": t}


# ------------------------------------------------------------------------------------------------
# Inputs and the network's units.


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


_outputs = jax.jit(lambda state, x, gdef: nnx.merge(gdef, state)(x), static_argnums=2)


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


def search_units(net, x_sel, y_sel, x_test, y_test, batch: int = 64) -> dict[str, Any]:
  """The unit (layer, y, x, map) of any layer with the best selection AUC; per-layer bests too."""
  sel, test = layer_outputs(net, x_sel, batch), layer_outputs(net, x_test, batch)
  best, per_layer = None, []
  for i, (s, t) in enumerate(zip(sel, test)):
    c = choose(s, y_sel, t, y_test)
    yy, xx, ff = np.unravel_index(c["index"], s.shape[1:])
    c.update(layer=i + 1, location=[int(yy), int(xx)], map=int(ff))
    per_layer.append(c)
    if best is None or c["selection_auc"] > best["selection_auc"]:
      best = c
  return {**best, "per_layer": per_layer}


def unit_response(net, unit: dict, x_NxHxWxC: np.ndarray, batch: int = 64) -> np.ndarray:
  """The unit's raw activation (before its sign) for normalised images: [N]."""
  (y, x), f, layer = unit["location"], unit["map"], unit["layer"]
  return layer_outputs(net, x_NxHxWxC, batch)[layer - 1][:, y, x, f]


# ------------------------------------------------------------------------------------------------
# Controls.


def training_crops(src, n: int, step: int = 10**9) -> np.ndarray:
  """n training crops (standardised), from steps no training run reaches."""
  return np.stack([src.example(step + i, 0) for i in range(n)])


def gradient_energy(x_NxHxWxC: np.ndarray) -> np.ndarray:
  return np.abs(np.diff(x_NxHxWxC, axis=1)).mean((1, 2, 3)) + \
      np.abs(np.diff(x_NxHxWxC, axis=2)).mean((1, 2, 3))


def logistic_regression(x_NxD: np.ndarray, y_N: np.ndarray, l2: float) -> np.ndarray:
  """Weights (bias last) of L2-regularised logistic regression, fitted by L-BFGS."""
  from scipy.optimize import minimize
  xb = np.c_[x_NxD, np.ones(len(x_NxD))].astype(np.float64)
  y = np.asarray(y_N, np.float64)

  def f(w):
    z = xb @ w
    p = 1 / (1 + np.exp(-z))
    loss = np.mean(np.logaddexp(0, z) - y * z) + 0.5 * l2 * w[:-1] @ w[:-1]
    g = xb.T @ (p - y) / len(y)
    g[:-1] += l2 * w[:-1]
    return loss, g

  return minimize(f, np.zeros(xb.shape[1]), jac=True, method="L-BFGS-B",
                  options={"maxiter": 500}).x


def logistic_control(x_sel, y_sel, x_test, y_test, l2s=(1e-3, 1e-2, 1e-1, 1.0), folds: int = 4,
                     seed: int = 0) -> dict[str, Any]:
  """Logistic regression on pixels: l2 by cross-validated AUC within the selection split, refit
  on all of it; its score goes through `choose` like every other candidate (one column)."""
  a, b = x_sel.reshape(len(x_sel), -1), x_test.reshape(len(x_test), -1)
  fold = np.random.default_rng(seed).permutation(len(a)) % folds
  cv = []
  for l2 in l2s:
    s = np.empty(len(a))
    for k in range(folds):
      w = logistic_regression(a[fold != k], y_sel[fold != k], l2)
      s[fold == k] = a[fold == k] @ w[:-1] + w[-1]
    cv.append(float(auc(s, y_sel)[0]))
  l2 = l2s[int(np.argmax(cv))]
  w = logistic_regression(a, y_sel, l2)
  c = choose((a @ w[:-1])[:, None], y_sel, (b @ w[:-1])[:, None], y_test, both_signs=False)
  return {**c, "l2": l2, "cv_auc": max(cv)}


def controls(cfg: Config, x_sel, y_sel, x_test, y_test, crops: np.ndarray | None = None,
             random_seed: int = 12345) -> dict[str, dict[str, Any]]:
  """Every control through the same selection -> test procedure."""
  out = {}
  net = model_lib.create(cfg, seed=random_seed)
  r = search_units(net, x_sel, y_sel, x_test, y_test)
  out["random_weights"] = {k: v for k, v in r.items() if k != "per_layer"}
  if crops is not None:
    f = crops.reshape(len(crops), -1)
    out["linear_filters"] = choose(x_sel.reshape(len(x_sel), -1) @ f.T, y_sel,
                                   x_test.reshape(len(x_test), -1) @ f.T, y_test)
  out["single_pixel"] = choose(x_sel, y_sel, x_test, y_test)
  out["gradient_energy"] = choose(gradient_energy(x_sel)[:, None], y_sel,
                                  gradient_energy(x_test)[:, None], y_test)
  out["logistic_regression"] = logistic_control(x_sel, y_sel, x_test, y_test)
  return out


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

  @jax.jit
  def step(x, _):
    g = jax.grad(lambda x: jnp.sum(act(x)))(x)
    g = g / (jnp.sqrt(jnp.sum(g * g, axis=(1, 2, 3), keepdims=True)) + 1e-12)
    return project(x + lr * norm * g), None

  x0 = project(jax.random.normal(jax.random.key(seed), shape))
  x, _ = jax.lax.scan(step, x0, None, length=steps)
  a = np.asarray(jax.jit(act)(x))
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


def by_source(scores: dict[str, np.ndarray], labels_N, sources_N) -> dict[str, dict[str, float]]:
  """Each detector's AUC on one face source at a time ("lfw/17" -> "lfw") against every
  non-face: shows whether a detector's lead comes from one kind of face."""
  labels_N = np.asarray(labels_N)
  groups = np.array([str(s).split("/")[0] for s in sources_N])
  out = {}
  for g in sorted(set(groups[labels_N == 1])):
    m = (labels_N == 0) | (groups == g)
    out[g] = {"faces": int(np.sum(labels_N[m] == 1)),
              **{k: float(auc(np.asarray(s)[m], labels_N[m])[0]) for k, s in scores.items()}}
  return out


def histogram(scores_N, labels_N, bins: int = 30) -> dict[str, list]:
  edges = np.histogram_bin_edges(scores_N, bins)
  y = np.asarray(labels_N).astype(bool)
  return {"edges": edges.tolist(), "faces": np.histogram(scores_N[y], edges)[0].tolist(),
          "nonfaces": np.histogram(scores_N[~y], edges)[0].tolist()}


def evaluate(cfg: Config, net, lset: faces.LabelledSet, crops: np.ndarray | None = None,
             top_k: int = 16, stimulus_steps: int = 200) -> dict[str, Any]:
  """The whole face-unit evaluation of a trained net on a labelled set (`faces.labelled_set`):
  {face_unit, controls, trivial_aucs, by_source, counts, chance_accuracy, histogram, roc, top_k,
  stimulus, invariance, cat}. `metrics(report)` keeps its JSON part."""
  size, ch, wh = cfg.model.image_size, cfg.model.channels, cfg.model.whiten_input
  sel, test = lset.split == "selection", lset.split == "test"
  x_sel, x_test = normalise(lset.images[sel], size, ch, wh), normalise(lset.images[test], size, ch, wh)
  y_sel, y_test = lset.labels[sel], lset.labels[test]
  unit = search_units(net, x_sel, y_sel, x_test, y_test)
  r_test = unit["test_scores"]
  ctrl = controls(cfg, x_sel, y_sel, x_test, y_test, crops)
  rocs = {"face_unit": roc(r_test, y_test), **{k: roc(c["test_scores"], y_test)
                                                for k, c in ctrl.items()}}
  top = np.argsort(-r_test)[:top_k]
  feats = faces.trivial_features(lset.images[test])
  cat = unit["sign"] * unit_response(net, unit, normalise(faces.cat_probe(size[0], ch), size, ch, wh))
  test_faces = np.flatnonzero(test & (lset.labels == 1))
  return {
      "face_unit": {k: v for k, v in unit.items() if k not in ("index", "candidates")},
      "test_labels": y_test,
      "controls": ctrl,
      "trivial_aucs": {k: float(auc(v, y_test)[0]) for k, v in feats.items()},
      "by_source": by_source({"face_unit": r_test, **{k: c["test_scores"] for k, c in ctrl.items()}},
                             y_test, lset.source[test]),
      "counts": lset.counts(),
      "chance_accuracy": float(max(y_test.mean(), 1 - y_test.mean())),
      "histogram": histogram(r_test, y_test),
      "roc": rocs,
      "top_k": {"images": lset.images[test][top], "labels": y_test[top].tolist(),
                "responses": r_test[top].tolist()},
      "stimulus": optimal_stimulus(net, unit, steps=stimulus_steps),
      "invariance": invariance(net, unit, lset.context[test_faces], ch, whiten=wh),
      "cat": {"response": float(cat[0]),
              "face_percentile": float(np.mean(r_test[y_test == 1] < cat[0]) * 100),
              "nonface_percentile": float(np.mean(r_test[y_test == 0] < cat[0]) * 100)},
  }


def metrics(report: dict) -> dict:
  """The JSON-able numbers of a report: images and per-image scores left out, arrays as lists."""
  def conv(v):
    if isinstance(v, dict):
      return {k: conv(x) for k, x in v.items()
              if k not in ("test_scores", "test_labels", "images", "image")}
    if isinstance(v, list):
      return [conv(x) for x in v]
    if isinstance(v, np.ndarray):
      return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
      return v.item()
    return v
  return conv(report)
