"""Finding and testing the face unit (Le et al. 2012, section 4.2), honestly.

Every unit (layer, y, x, map) of every layer's output is scored by its ROC AUC for faces vs
non-faces on the selection split; the best one is chosen there, with its sign and best threshold,
and only then scored on the test split. Controls go through the same `choose`: the same
architecture with random weights, the best of N linear filters sampled from training crops, the best
single pixel, gradient energy, and logistic regression on pixels fitted to the selection split.
Everything here returns data (dicts, arrays); `lcnet.plots` draws it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from lcnet import faces, holdout, units
from lcnet import model as model_lib
from lcnet.config import Config

# On 2 CPU cores the whole evaluation ran 2.1x faster with one BLAS thread than with OpenBLAS's
# default of one per core (234 -> 111 s at 48x48, the same AUCs; BENCHMARKS.md, "The evaluation
# on one BLAS thread"): its matrix-vector products (logistic regression's L-BFGS steps, 2305
# weights) are too small to split across threads.
BLAS_THREADS = 1


@contextlib.contextmanager
def blas_threads(n: int | None = BLAS_THREADS):
  """NumPy's and SciPy's BLAS limited to `n` threads within (None: as they are), restored after."""
  if n is None:
    yield
    return
  from threadpoolctl import threadpool_limits
  with threadpool_limits(limits=n, user_api="blas"):
    yield


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
# Choosing units and controls.


def search_units(net, x_sel, y_sel, x_test, y_test, batch: int = 64,
                 unit_layers: tuple[int, ...] = ()) -> dict[str, Any]:
  """The unit (layer, y, x, map) with the best selection AUC among `unit_layers` (from 1; ():
  every layer); per-layer bests of every layer too."""
  sel, test = units.layer_outputs(net, x_sel, batch), units.layer_outputs(net, x_test, batch)
  among = holdout.check_unit_layers(unit_layers, len(sel))
  best, per_layer = None, []
  for i, (s, t) in enumerate(zip(sel, test)):
    c = choose(s, y_sel, t, y_test)
    yy, xx, ff = np.unravel_index(c["index"], s.shape[1:])
    c.update(layer=i + 1, location=[int(yy), int(xx)], map=int(ff))
    per_layer.append(c)
    if i + 1 in among and (best is None or c["selection_auc"] > best["selection_auc"]):
      best = c
  return {**best, "per_layer": per_layer}


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


def fit_logistic(x_NxD: np.ndarray, y_N: np.ndarray, l2s=(1e-3, 1e-2, 1e-1, 1.0), folds: int = 4,
                 seed: int = 0) -> tuple[Callable[[np.ndarray], np.ndarray], float, float]:
  """Logistic regression on pixels, l2 by cross-validated AUC: (scorer of images, l2, CV AUC)."""
  a = x_NxD.reshape(len(x_NxD), -1)
  fold = np.random.default_rng(seed).permutation(len(a)) % folds
  cv = []
  for l2 in l2s:
    s = np.empty(len(a))
    for k in range(folds):
      w = logistic_regression(a[fold != k], y_N[fold != k], l2)
      s[fold == k] = a[fold == k] @ w[:-1] + w[-1]
    cv.append(float(auc(s, y_N)[0]))
  l2 = l2s[int(np.argmax(cv))]
  w = logistic_regression(a, y_N, l2)
  return (lambda x: x.reshape(len(x), -1) @ w[:-1]), l2, max(cv)


def logistic_control(x_sel, y_sel, x_test, y_test, **kw) -> dict[str, Any]:
  """Logistic regression on pixels fitted to the selection split (`fit_logistic`); its score goes
  through `choose` like every other candidate (one column)."""
  score, l2, cv = fit_logistic(x_sel, y_sel, **kw)
  c = choose(score(x_sel)[:, None], y_sel, score(x_test)[:, None], y_test, both_signs=False)
  return {**c, "l2": l2, "cv_auc": cv}


def controls(cfg: Config, x_sel, y_sel, x_test, y_test, crops: np.ndarray | None = None,
             random_seed: int = 12345, unit_layers: tuple[int, ...] = ()) -> dict[str, dict[str, Any]]:
  """Every control through the same selection -> test procedure (random weights: among the
  same layers as the face unit)."""
  out = {}
  net = model_lib.create(cfg, seed=random_seed)
  r = search_units(net, x_sel, y_sel, x_test, y_test, unit_layers=unit_layers)
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


def generalisation(cfg: Config, net, lset: faces.LabelledSet, crops: np.ndarray | None = None,
                   views: int = 2, seed: int = 0, random_seed: int = 12345,
                   max_folds: int = 20, unit_layers: tuple[int, ...] = (),
                   choose_shifted: bool = False) -> dict[str, Any]:
  """The headline: every detector through leave-one-source-out choice and scoring
  (`lcnet.holdout`), on the images as they are and on `views` shifted/scaled views of each:
  {"detectors": name -> summary, "verdict", "folds", "unit_folds" (the unit each fold chose),
  "unit_layers", "per_layer" (the trained network's units of one layer at a time)}. The face
  unit and the random-weights network's unit are chosen among `unit_layers` (from 1; (): all).
  `choose_shifted`: every unsupervised detector is chosen on its selection images and their views
  together (`holdout.score_fold`); logistic regression is fitted on the images as they are."""
  among = holdout.check_unit_layers(unit_layers, len(cfg.model.layers))
  size, ch, wh = cfg.model.image_size, cfg.model.channels, cfg.model.whiten_input
  y, g = lset.labels, holdout.source_groups(lset.source)
  fold_list = holdout.folds(y, g, max_folds)  # bad sources fail here, before the network runs
  x = units.normalise(lset.images, size, ch, wh)
  xs = np.stack([units.normalise(v, size, ch, wh)
                 for v in holdout.shifted_images(lset.context, views, seed)])

  def unit_cols(n):
    outs = [units.layer_outputs(n, a) for a in (x, *xs)]
    shapes = [o.shape[1:] for o in outs[0]]
    cols = [np.concatenate([o.reshape(len(x), -1) for o in out], 1) for out in outs]
    return cols[0], np.stack(cols[1:]), shapes

  def pixels(a):
    return a.reshape(*a.shape[:-3], -1)

  def run(cols, shifted, **kw):
    return holdout.choose_and_score(cols, y, g, fold_list, shifted, choose_shifted=choose_shifted,
                                    **kw)

  cols, shifted, shapes = unit_cols(net)
  edges = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
  cand = np.concatenate([np.arange(edges[l - 1], edges[l]) for l in among])  # columns chosen among
  # every unit's selection AUCs once, for the face unit's choice and each layer's alike
  aucs = None if choose_shifted else holdout.selection_aucs(cols, y, g, fold_list)

  def among_cols(idx):
    return {} if aucs is None else {"selection_aucs_FxU": aucs[:, idx]}
  det = {"face_unit": run(cols[:, cand], shifted[..., cand], **among_cols(cand))}
  per_layer = [run(cols[:, a:b], shifted[..., a:b], **among_cols(slice(a, b)))  # each layer alone
               for a, b in zip(edges[:-1], edges[1:])]
  unit_folds = [{"fold": f["fold"], **units.unit_at(int(cand[f["index"]]), shapes),
                 "sign": f["sign"]} for f in det["face_unit"]["folds"]]
  r_cols, r_shifted, _ = unit_cols(model_lib.create(cfg, seed=random_seed))
  det["random_weights"] = run(r_cols[:, cand], r_shifted[..., cand])
  if crops is not None:
    f = pixels(crops).T
    det["linear_filters"] = run(pixels(x) @ f, pixels(xs) @ f)
  det["single_pixel"] = run(pixels(x), pixels(xs))
  det["gradient_energy"] = run(gradient_energy(x)[:, None], np.stack([gradient_energy(v)[:, None]
                                                                      for v in xs]))
  det["logistic_regression"] = holdout.fitted_and_score(
      lambda sel: fit_logistic(x[sel], y[sel], l2s=(1e-2, 1e-1, 1.0), folds=3)[0], x, y, g,
      fold_list, xs)
  scope = "" if len(among) == len(shapes) else f"layer{'s' * (len(among) > 1)} " + \
      ", ".join(map(str, among))
  return {"detectors": det, "verdict": holdout.verdict(det, scope=scope), "unit_folds": unit_folds,
          "unit_layers": list(among), "choose_shifted": bool(choose_shifted), "per_layer": per_layer,
          "folds": [f.sizes(y) for f in fold_list]}


def evaluate(cfg: Config, net, lset: faces.LabelledSet, crops: np.ndarray | None = None,
             top_k: int = 16, stimulus_steps: int = 200, views: int = 2,
             unit_layers: tuple[int, ...] = (), threads: int | None = BLAS_THREADS,
             choose_shifted: bool = False) -> dict[str, Any]:
  """The whole face-unit evaluation of a trained net on a labelled set (`faces.labelled_set` or
  `faces.from_folders`): {generalisation (the headline), face_unit, controls (the selection/test
  split view), trivial_aucs, by_source, counts, chance_accuracy, histogram, roc, top_k, stimulus,
  invariance, cat}. The face unit is chosen among `unit_layers` (from 1; (): all), in the
  headline on the selection images' shifted views too with `choose_shifted`. BLAS runs on
  `threads` threads meanwhile (`blas_threads`). `metrics(report)` keeps its JSON part."""
  with blas_threads(threads):
    return _evaluate(cfg, net, lset, crops, top_k, stimulus_steps, views, unit_layers,
                     choose_shifted)


def _evaluate(cfg, net, lset, crops, top_k, stimulus_steps, views, unit_layers,
              choose_shifted) -> dict[str, Any]:
  size, ch, wh = cfg.model.image_size, cfg.model.channels, cfg.model.whiten_input
  gen = generalisation(cfg, net, lset, crops, views, unit_layers=unit_layers,
                       choose_shifted=choose_shifted)
  sel, test = lset.split == "selection", lset.split == "test"
  x_sel = units.normalise(lset.images[sel], size, ch, wh)
  x_test = units.normalise(lset.images[test], size, ch, wh)
  y_sel, y_test = lset.labels[sel], lset.labels[test]
  unit = search_units(net, x_sel, y_sel, x_test, y_test, unit_layers=unit_layers)
  r_test = unit["test_scores"]
  ctrl = controls(cfg, x_sel, y_sel, x_test, y_test, crops, unit_layers=unit_layers)
  rocs = {"face_unit": roc(r_test, y_test), **{k: roc(c["test_scores"], y_test)
                                                for k, c in ctrl.items()}}
  top = np.argsort(-r_test)[:top_k]
  feats = faces.trivial_features(lset.images[test])
  cat = unit["sign"] * units.unit_response(net, unit,
                                           units.normalise(faces.cat_probe(size[0], ch), size, ch, wh))
  test_faces = np.flatnonzero(test & (lset.labels == 1))
  return {
      "generalisation": gen,
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
      "stimulus": units.optimal_stimulus(net, unit, steps=stimulus_steps),
      "invariance": units.invariance(net, unit, lset.context[test_faces], ch, whiten=wh),
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
