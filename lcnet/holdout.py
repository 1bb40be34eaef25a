"""Does a detector hold up on faces it was not chosen on? Leave-one-source-out scoring and the
verdict.

Every labelled image has a source (a video, a photo, "lfw" for all of LFW; `source_groups`). For
each face source (or group of sources: at most `max_folds` folds), a detector's candidate (a
unit, a filter, a pixel; and its sign) is chosen on the *other* sources by source-balanced AUC,
then scored on the held-out source's faces against non-faces of sources the choice never saw:
half of the non-face sources go to each fold's test (alternating from fold to fold), and
non-face crops of the held-out source's own images always do. The headline is the mean over
folds (each source weighs the same, whatever its number of faces) and the worst fold.

Each chosen candidate is also scored on the same test images shifted by up to `max_shift` of the
side and zoomed by `scale` (Le et al. 2012, fig. 4's range), non-faces treated the same: a
detector that only fires at one framing loses there.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

TARGET_AUC = 0.85  # the verdict's bar: leave-one-source-out AUC of the trained network's unit
MARGIN = 0.05  # ... and its lead over every unsupervised control
SUPERVISED = ("logistic_regression",)  # fitted with labels: a reference, not part of the bar
# the unsupervised controls the bar names: a verdict without one of them cannot say "emerged"
BAR_CONTROLS = ("random_weights", "linear_filters", "single_pixel", "gradient_energy")
# AUCs are ratios of counts, so 0.85 - 0.80 comes out as 0.04999...: a value this close to the
# bar meets it (an AUC over N images moves in steps of at least 1 / N^2, far above this)
BAR_ROUNDING = 1e-9


def source_groups(sources_N) -> np.ndarray:
  """"lfw/17" -> "lfw": the source an image counts under (a video, a photo, a folder)."""
  return np.array([str(s).split("/")[0] for s in sources_N])


# ------------------------------------------------------------------------------------------------
# Source-balanced AUC.


def balanced_auc(scores_NxU: np.ndarray, labels_N, groups_N,
                 chunk_elements: int = 1 << 22) -> np.ndarray:
  """ROC AUC of every column with each source weighing the same: faces of source a weigh
  1 / (faces of a), non-faces of source b 1 / (non-faces of b); ties count half. Equals the mean,
  over (face source, non-face source) pairs, of their AUC; with one image per source, the plain
  AUC. Vectorised over columns: one sort, then weighted counts of the non-faces below each face;
  `chunk_elements` bounds the scores sorted at once (columns in slices), and so the memory."""
  s = np.asarray(scores_NxU)
  s = s[:, None] if s.ndim == 1 else s.reshape(len(s), -1)
  y, w = _source_weights(labels_N, groups_N)
  # slices of near-equal width: a single column would be summed in another order (pairwise)
  return np.concatenate([_weighted_auc(np.asarray(p, np.float64), y, w)
                         for p in np.array_split(s, _slices(s.shape, chunk_elements), axis=1)])


def selection_aucs(cols_NxU, labels_N, groups_N, fold_list: list[Fold],
                   chunk_elements: int = 1 << 22) -> np.ndarray:
  """[fold, column]: `balanced_auc(cols[f.select], labels[f.select], groups[f.select])` of every
  fold f, equal to it bit for bit, with one sort of each column instead of one per fold: the
  stable order of a fold's selection rows is the stable order of all rows restricted to them
  (equal scores keep their rows' order either way), and each column's AUC is computed from its
  own order alone, in slices of at least two columns as `balanced_auc` does."""
  s = np.asarray(cols_NxU)
  s = s.reshape(len(s), -1)
  y, g = np.asarray(labels_N), np.asarray(groups_N)
  per_fold = [(f.select, np.cumsum(f.select) - 1, *_source_weights(y[f.select], g[f.select]))
              for f in fold_list]
  out = np.empty((len(fold_list), s.shape[1]))
  for cols in np.array_split(np.arange(s.shape[1]), _slices(s.shape, chunk_elements)):
    p = np.asarray(s[:, cols], np.float64)
    order_UxN = np.argsort(p, axis=0, kind="stable").T
    for k, (sel, local, yk, wk) in enumerate(per_fold):
      kept_Uxn = order_UxN[sel[order_UxN]].reshape(len(cols), -1)  # selection rows, in order
      # C order, as argsort gives it: the sums over rows then run in the same order
      out[k, cols] = _weighted_auc(p[sel], yk, wk, np.ascontiguousarray(local[kept_Uxn].T))
  return out


def _source_weights(labels_N, groups_N) -> tuple[np.ndarray, np.ndarray]:
  """(labels as bool, per-image weights): each class's sources weigh the same, and images within
  a source too; ValueError unless both classes are present."""
  y = np.asarray(labels_N).astype(bool)
  if not y.any() or y.all():
    raise ValueError(f"balanced_auc needs both classes; got {int(y.sum())} faces and "
                     f"{int((~y).sum())} non-faces")
  _, g = np.unique(np.asarray(groups_N).astype(str), return_inverse=True)
  w = np.zeros(len(y))
  for cls in (True, False):
    m = y == cls
    per = np.bincount(g[m], minlength=g.max() + 1)
    w[m] = 1.0 / (per[g[m]] * np.count_nonzero(per))
  return y, w


def _slices(shape_NxU: tuple[int, int], chunk_elements: int) -> int:
  """How many column slices keep each under `chunk_elements` scores, never narrower than two
  columns (one column alone is summed in another order: its AUC would differ in the last bit)."""
  n, u = shape_NxU
  return max(1, min(-(-u * n // chunk_elements), u // 2))


def _weighted_auc(s: np.ndarray, y: np.ndarray, w: np.ndarray,
                  order: np.ndarray | None = None) -> np.ndarray:
  """`balanced_auc` of the columns of s [N, U] (float64), given the per-image weights w and,
  optionally, each column's stable ascending order (`selection_aucs`)."""
  n, u = s.shape
  if order is None:
    order = np.argsort(s, axis=0, kind="stable")
  ss = np.take_along_axis(s, order, 0)
  neg = np.where(y, 0.0, w)[order]  # non-face weight at each sorted position
  pos = np.where(y, w, 0.0)[order]
  run = np.cumsum(np.r_[np.zeros((1, u), bool), ss[1:] != ss[:-1]], axis=0)  # tie runs, per column
  flat = (run + np.arange(u) * n).ravel(order="F")
  neg_run = np.bincount(flat, neg.ravel(order="F"), n * u).reshape(u, n).T  # [run, column]
  below = np.cumsum(neg_run, axis=0) - neg_run
  at = np.take_along_axis(below + 0.5 * neg_run, run, 0)
  return np.clip(np.sum(pos * at, axis=0), 0.0, 1.0)  # the weights sum to 1 up to rounding


# ------------------------------------------------------------------------------------------------
# Folds.


@dataclasses.dataclass(frozen=True)
class Fold:
  """One held-out group of face sources: `select` and `test` are boolean masks over the images."""
  name: str
  select: np.ndarray
  test: np.ndarray

  def sizes(self, labels_N) -> dict[str, Any]:
    y = np.asarray(labels_N) == 1
    return {"fold": self.name, "selection": int(self.select.sum()),
            "test_faces": int((self.test & y).sum()), "test_nonfaces": int((self.test & ~y).sum())}


def folds(labels_N, groups_N, max_folds: int = 20) -> list[Fold]:
  """One fold per face source (face sources dealt round-robin into `max_folds` folds if there are
  more). Fold k's test: its faces, non-faces of its own sources, and every other non-face source
  of rank r with (r + k) even; its selection: everything else, except its sources' images."""
  y = np.asarray(labels_N).astype(bool)
  g = np.asarray(groups_N).astype(str)
  face_src = sorted(set(g[y]))
  nonface_src = sorted(set(g[~y]))
  if len(face_src) < 2:
    raise ValueError(f"leave-one-source-out needs faces from at least 2 sources; got "
                     f"{face_src or 'none'}: put the faces in sub-folders, one per source (a "
                     f"person, a video, a photo collection), or directly in the folder (each file a "
                     f"source)")
  if len(set(nonface_src) - set(face_src)) < 2:
    raise ValueError(f"leave-one-source-out needs non-faces from at least 2 sources of their own, so "
                     f"that each fold is tested on non-faces its choice never saw; got "
                     f"{nonface_src or 'none'}: use several sub-folders, or files directly in the "
                     f"folder (each file a source)")
  k = min(len(face_src), max_folds)
  held = [face_src[i::k] for i in range(k)]
  others = [s for s in nonface_src if s not in face_src]
  out = []
  for i, mine in enumerate(held):
    test_src = set(mine) | {s for r, s in enumerate(others) if (r + i) % 2 == 0}
    own = np.isin(g, mine)
    test = (y & own) | (~y & np.isin(g, sorted(test_src)))
    out.append(Fold("+".join(mine), ~own & ~test, test))
  return out


# ------------------------------------------------------------------------------------------------
# Choosing and scoring.


def score_fold(fold: Fold, cols_NxU, labels_N, groups_N, shifted_VxNxU=None,
               both_signs: bool = True, choose_shifted: bool = False,
               selection_auc_U: np.ndarray | None = None) -> dict[str, Any]:
  """The column (and sign) with the best balanced AUC on the fold's selection, scored on its test
  images, as they are and shifted/scaled (`shifted_VxNxU`: V views of every image).
  `choose_shifted`: the selection images' V views are pooled with them for the choice, so the
  column chosen is one that holds when the selection faces are re-framed, not one keyed to their
  framing; the test images and their views stay out of the choice either way.
  `selection_auc_U`: the columns' selection AUCs, already computed (`selection_aucs`)."""
  cols = np.asarray(cols_NxU).reshape(len(labels_N), -1)
  y, g = np.asarray(labels_N), np.asarray(groups_N)
  s = fold.select
  if selection_auc_U is not None:
    if choose_shifted or np.shape(selection_auc_U) != (cols.shape[1],):
      raise ValueError(f"selection_auc_U: {cols.shape[1]} AUCs on the images as they are (one "
                       f"per column, choose_shifted=False), got shape "
                       f"{np.shape(selection_auc_U)} with choose_shifted={choose_shifted}")
    a = np.asarray(selection_auc_U)
  elif choose_shifted:
    if shifted_VxNxU is None:
      raise ValueError("choose_shifted needs the shifted views (shifted_VxNxU) to choose on")
    views = np.asarray(shifted_VxNxU).reshape(-1, len(y), cols.shape[1])[:, s]
    pooled = np.concatenate([cols[s][None], views]).reshape(-1, cols.shape[1])
    a = balanced_auc(pooled, np.tile(y[s], len(views) + 1), np.tile(g[s], len(views) + 1))
  else:
    a = balanced_auc(cols[s], y[s], g[s])
  signed = np.maximum(a, 1 - a) if both_signs else a
  j = int(np.argmax(signed))
  sign = 1.0 if a[j] >= 0.5 or not both_signs else -1.0
  t = fold.test
  out = {"fold": fold.name, "index": j, "sign": sign, "selection_auc": float(signed[j]),
         "test_auc": float(balanced_auc(sign * cols[t, j], y[t], g[t])[0])}
  if shifted_VxNxU is not None:
    v = np.asarray(shifted_VxNxU).reshape(-1, len(y), cols.shape[1])[:, t, j]
    views = len(v)
    out["shifted_auc"] = float(balanced_auc(sign * v.reshape(-1), np.tile(y[t], views),
                                            np.tile(g[t], views))[0])
  return out


def summary(per_fold: list[dict]) -> dict[str, Any]:
  """Mean and worst over folds, as they are and shifted; the folds themselves."""
  out: dict[str, Any] = {"folds": per_fold}
  for key, name in (("test_auc", "auc"), ("shifted_auc", "shifted_auc")):
    if per_fold and key in per_fold[0]:
      v = [f[key] for f in per_fold]
      i = int(np.argmin(v))
      out[name] = float(np.mean(v))
      out[f"worst_{name}"] = float(v[i])
      out[f"worst_{name}_fold"] = per_fold[i]["fold"]
  return out


def choose_and_score(cols_NxU, labels_N, groups_N, fold_list: list[Fold], shifted_VxNxU=None,
                     both_signs: bool = True, choose_shifted: bool = False,
                     selection_aucs_FxU: np.ndarray | None = None) -> dict[str, Any]:
  """`score_fold` on every fold, summarised. Choosing on the images as they are, the folds'
  selection AUCs come from one sort per column (`selection_aucs`, or `selection_aucs_FxU` when
  the caller has them: the columns of a larger set, scored once)."""
  aucs = selection_aucs_FxU
  if aucs is None and not choose_shifted:
    aucs = selection_aucs(cols_NxU, labels_N, groups_N, fold_list)
  return summary([score_fold(f, cols_NxU, labels_N, groups_N, shifted_VxNxU, both_signs,
                             choose_shifted, None if aucs is None else aucs[k])
                  for k, f in enumerate(fold_list)])


def fitted_and_score(fit: Callable[[np.ndarray], Callable[[np.ndarray], np.ndarray]], x_NxD,
                     labels_N, groups_N, fold_list: list[Fold], shifted_VxNxD=None) -> dict:
  """For detectors trained with labels: `fit(select_mask)` returns a scorer fitted on the fold's
  selection images only; it is scored like any other candidate (one column, its sign fixed)."""
  per = []
  for f in fold_list:
    score = fit(f.select)
    shifted = None if shifted_VxNxD is None else np.stack([score(v) for v in shifted_VxNxD])
    per.append(score_fold(f, score(x_NxD)[:, None], labels_N, groups_N,
                          None if shifted is None else shifted[..., None], both_signs=False))
  return summary(per)


# ------------------------------------------------------------------------------------------------
# Shifted and scaled views.


def jitter(n: int, views: int, max_shift: float = 0.15, scale: tuple[float, float] = (0.8, 1.2),
           seed: int = 0) -> list[list[dict[str, float]]]:
  """`views` random framings per image, as `faces.view` arguments: shifts uniform within
  +-max_shift of the side (dx, dy in fractions), zoom log-uniform in `scale`."""
  rng = np.random.default_rng(seed)
  lo, hi = np.log(scale)
  return [[{"dx": float(rng.uniform(-max_shift, max_shift)),
            "dy": float(rng.uniform(-max_shift, max_shift)),
            "scale": float(np.exp(rng.uniform(lo, hi)))} for _ in range(n)] for _ in range(views)]


def shifted_images(context_Nx2Sx2S: np.ndarray, views: int, seed: int = 0, **kw) -> np.ndarray:
  """[V, N, S, S] views of every image's context (`faces.view`), framed by `jitter`."""
  from lcnet import faces
  size = context_Nx2Sx2S.shape[1] // 2
  plan = jitter(len(context_Nx2Sx2S), views, seed=seed, **kw)
  return np.stack([np.stack([faces.view(c, size, dx=j["dx"] * size, dy=j["dy"] * size,
                                        scale=j["scale"]) for c, j in zip(context_Nx2Sx2S, p)])
                   for p in plan])


# ------------------------------------------------------------------------------------------------
# The verdict.


def check_unit_layers(unit_layers, depth: int) -> tuple[int, ...]:
  """The layers (from 1) the face unit is chosen among; () means all `depth` of them."""
  layers = tuple(int(l) for l in unit_layers) or tuple(range(1, depth + 1))
  bad = [l for l in layers if not 1 <= l <= depth]
  if bad or len(set(layers)) != len(layers):
    raise ValueError(f"eval.unit_layers={tuple(unit_layers)}: the model has {depth} "
                     f"layer{'s' * (depth != 1)}; give distinct layer numbers in 1..{depth}, "
                     f"e.g. ({depth},), or () for every layer")
  return tuple(sorted(layers))


def verdict(detectors: dict[str, dict], unit: str = "face_unit", target: float = TARGET_AUC,
            margin: float = MARGIN, shift_words: str = "shifted and scaled", scope: str = "") -> str:
  """Plain words, whatever the outcome: a face unit emerged when the unit's leave-one-source-out
  AUC is >= target and >= every unsupervised control's + margin, both as the images are and
  shifted/scaled, and every control of `BAR_CONTROLS` was scored (a missing one is named).
  `detectors`: name -> `summary` (with "auc", and "shifted_auc" if scored); `scope`: where the
  unit was chosen ("layers 2, 3"), when not in every layer."""
  u = detectors[unit]
  unsup = {k: v for k, v in detectors.items() if k != unit and k not in SUPERVISED}
  missing = [k for k in BAR_CONTROLS if k not in detectors]
  views = [("auc", "as they are")] + ([("shifted_auc", shift_words)] if "shifted_auc" in u else [])
  parts, ok = [], not missing
  for key, words in views:
    a = u[key]
    best = max(unsup, key=lambda k: unsup[k][key]) if unsup else None
    lead = a - unsup[best][key] if best else float("inf")
    fails = ([f"below {target}"] if a < target - BAR_ROUNDING else []) + (
        [f"{lead:+.3f} from {best} {unsup[best][key]:.3f}, short of +{margin}"]
        if lead < margin - BAR_ROUNDING else [])
    ok &= not fails
    worst = u.get(f"worst_{key}")
    part = (f"{words}: AUC {a:.3f} (worst source {worst:.3f}, {u.get(f'worst_{key}_fold')})"
            if worst is not None else f"{words}: AUC {a:.3f}")
    part += ("; " + " and ".join(fails)) if fails else (
        f", {lead:+.3f} over the best unsupervised control ({best})" if best else "")
    parts.append(part)
  head = "A face unit emerged" if ok else "No face unit emerged"
  ref = [f"{k} {detectors[k]['auc']:.3f}" for k in SUPERVISED if k in detectors]
  return (f"{head} (bar: leave-one-source-out AUC >= {target} and >= {margin} above every "
          f"unsupervised control, on the images as they are and {shift_words}). On faces of sources "
          f"it was not chosen on, the network's best unit" + (f" in {scope}" if scope else "")
          + " scores " + "; ".join(parts) + "."
          + (f" The bar cannot be met: the {', '.join(missing)} control{'s' * (len(missing) > 1)} "
             f"did not run (e.g. eval.linear_filters=0 leaves out the linear filters)."
             if missing else "")
          + (f" Supervised reference (not part of the bar): {', '.join(ref)}." if ref else ""))
