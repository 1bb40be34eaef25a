"""Leave-one-source-out evaluation: the source-balanced AUC against its pairwise definition, folds
that never test on what they chose on, a planted unit found in every fold while a unit keyed to
one source's artefact scores chance elsewhere, shift/scale scoring that a layout detector fails,
the verdict's wording, and labelled sets from a user's folders."""
import numpy as np
import pytest
from numerics import naive_auc
from PIL import Image

from lcnet import evaluate, faces, holdout, model


def test_balanced_auc_is_the_mean_over_source_pairs():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 90)
  g = rng.choice(["a", "b", "c", "d"], 90, p=[0.55, 0.25, 0.15, 0.05])  # unequal sources
  s = np.round(rng.standard_normal((90, 4)) + y[:, None] * np.arange(4), 1)  # ties on purpose
  want = [np.mean([naive_auc(s[(g == a) & (y == 1) | (g == b) & (y == 0), j],
                             y[(g == a) & (y == 1) | (g == b) & (y == 0)])
                   for a in sorted(set(g[y == 1])) for b in sorted(set(g[y == 0]))])
          for j in range(4)]
  np.testing.assert_allclose(holdout.balanced_auc(s, y, g), want, rtol=1e-12)
  # one image per source: every image weighs the same, the plain AUC
  np.testing.assert_allclose(holdout.balanced_auc(s, y, np.arange(90)), evaluate.auc(s, y),
                             rtol=1e-12)
  with pytest.raises(ValueError, match="both classes"):
    holdout.balanced_auc(s, np.ones(90), g)
  # columns in slices (1 to 4 at a time): each column's AUC is its own sum of 90 weighted counts,
  # whose order may change with the slice's width; within 90 roundings of each other
  for chunk in (90, 90 * 2, 90 * 3):
    np.testing.assert_allclose(holdout.balanced_auc(s, y, g, chunk_elements=chunk),
                               holdout.balanced_auc(s, y, g), rtol=90 * np.finfo(float).eps)


def test_every_folds_selection_aucs_from_one_sort_equal_a_sort_per_fold_bit_for_bit():
  # Bit-exact by construction: a stable sort of a fold's selection rows is the stable sort of
  # all rows restricted to them, and each column's AUC is summed from its own order alone (in
  # slices of >= 2 columns on both paths). Ties and float32 scores on purpose.
  rng = np.random.default_rng(3)
  y = np.r_[np.ones(40), np.zeros(120)].astype(int)
  g = np.r_[rng.choice(["f0", "f1", "f2", "f3", "f4"], 40),
            rng.choice(["f1", "f3", "n0", "n1", "n2", "n3", "n4"], 120)]  # own crops of f1, f3
  cols = np.round(rng.standard_normal((160, 37)) + 0.5 * y[:, None], 1).astype(np.float32)
  fl = holdout.folds(y, g)
  want = np.stack([holdout.balanced_auc(cols[f.select], y[f.select], g[f.select]) for f in fl])
  for chunk in (1 << 22, 160 * 5, 1):  # one slice; slices of 5 columns; the narrowest, 2 columns
    got = holdout.selection_aucs(cols, y, g, fl, chunk_elements=chunk)
    assert got.shape == (len(fl), 37) and np.array_equal(got, want)
  one = holdout.selection_aucs(cols[:, 5], y, g, fl)  # a single column alone, as balanced_auc
  assert np.array_equal(one, np.stack([holdout.balanced_auc(cols[f.select, 5], y[f.select],
                                                            g[f.select]) for f in fl]))
  # the choice through them is the choice through a sort per fold, fold by fold
  views = cols[None] + rng.standard_normal((2, 160, 37)).astype(np.float32)
  per_fold = holdout.summary([holdout.score_fold(f, cols, y, g, views) for f in fl])
  assert holdout.choose_and_score(cols, y, g, fl, views) == per_fold
  assert holdout.choose_and_score(cols[:, 4:9], y, g, fl, views[..., 4:9],
                                  selection_aucs_FxU=want[:, 4:9]) == holdout.summary(
      [holdout.score_fold(f, cols[:, 4:9], y, g, views[..., 4:9]) for f in fl])
  with pytest.raises(ValueError, match="choose_shifted=True"):
    holdout.score_fold(fl[0], cols, y, g, views, choose_shifted=True, selection_auc_U=want[0])


def synthetic(face_counts, nonface_sources=6, per_nonface=60, seed=0):
  y = np.r_[np.ones(sum(face_counts)), np.zeros(nonface_sources * per_nonface)].astype(int)
  g = np.r_[np.repeat([f"f{i}" for i in range(len(face_counts))], face_counts),
            np.repeat([f"n{i}" for i in range(nonface_sources)], per_nonface)]
  return y, g, np.random.default_rng(seed)


def test_folds_hold_out_each_face_source_and_unseen_nonfaces():
  y, g, _ = synthetic([5, 3, 4, 2], nonface_sources=5, per_nonface=3)
  y = np.r_[y, [0, 0]]  # non-face crops of source f1's own images
  g = np.r_[g, ["f1", "f1"]]
  fl = holdout.folds(y, g)
  assert [f.name for f in fl] == ["f0", "f1", "f2", "f3"]
  for f in fl:
    assert not (f.select & f.test).any()
    assert set(g[f.test & (y == 1)]) == {f.name}
    assert f.name not in set(g[f.select])  # nothing of the held-out source is chosen on
    assert not set(g[f.test & (y == 0)]) & set(g[f.select & (y == 0)])  # unseen non-faces
    for m in (f.select, f.test):
      assert set(y[m]) == {0, 1}
  assert set(g[fl[1].test & (y == 0)]) >= {"f1"}
  # every other non-face source is tested on in about half of the folds, chosen on in the rest
  for n in ("n0", "n1", "n2"):
    assert sum(n in set(g[f.test]) for f in fl) == 2
  assert len(holdout.folds(y, g, max_folds=2)) == 2
  with pytest.raises(ValueError, match="faces from at least 2 sources"):
    holdout.folds(y, np.where(y == 1, "f0", g))
  with pytest.raises(ValueError, match="non-faces from at least 2 sources"):
    holdout.folds(y, np.where(y == 0, "n0", g))


def test_a_planted_unit_is_found_everywhere_and_an_artefact_scores_chance_elsewhere():
  y, g, rng = synthetic([60, 30, 30, 30, 30])
  n = len(y)
  true_unit = rng.standard_normal(n) + 4.0 * y  # faces of every source
  artefact = rng.standard_normal(n) + 6.0 * ((g == "f0") & (y == 1))  # only source f0's faces
  noise = rng.standard_normal((n, 100))
  fl = holdout.folds(y, g)
  r = holdout.choose_and_score(np.c_[noise, true_unit, artefact], y, g, fl)
  assert [f["index"] for f in r["folds"]] == [100] * 5 and r["worst_auc"] > 0.97
  # on pooled AUC the artefact looks like a detector (f0 holds a third of the faces) ...
  assert evaluate.auc(artefact, y)[0] > 0.65
  # ... leave-one-source-out chooses it wherever f0 is in the selection, and it scores chance
  r = holdout.choose_and_score(np.c_[noise, artefact], y, g, fl)
  others = [f for f in r["folds"] if f["fold"] != "f0"]
  assert all(f["index"] == 100 and f["selection_auc"] > 0.6 for f in others)
  assert all(abs(f["test_auc"] - 0.5) < 0.2 for f in others)
  assert abs(np.mean([f["test_auc"] for f in others]) - 0.5) < 0.1 and r["auc"] < 0.65


def blob_contexts(n, size, rng, face):
  """Noise contexts [n, 2S, 2S]; faces carry a bright blob at the centre, non-faces one far off."""
  s2 = 2 * size
  yy, xx = np.mgrid[:s2, :s2]
  out = []
  for _ in range(n):
    cy, cx = ((s2 - 1) / 2,) * 2 if face else rng.choice([2.0, s2 - 3.0], 2)
    out.append(0.2 * rng.standard_normal((s2, s2)) + 3 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2)))
  return np.stack(out).astype(np.float32)


def blob_set(size, seed):
  """Blob faces of 3 sources and non-faces of 4: labels, sources, the images [N, S, S], two
  shifted/scaled views of them [2, N, S, S], and the generator that drew them."""
  rng = np.random.default_rng(seed)
  y, g, _ = synthetic([20, 20, 20], nonface_sources=4, per_nonface=30)
  ctx = np.concatenate([blob_contexts(int(y.sum()), size, rng, True),
                        blob_contexts(int((1 - y).sum()), size, rng, False)])
  x = np.stack([faces.view(c, size) for c in ctx])
  return y, g, x, holdout.shifted_images(ctx, views=2, seed=1), rng


def test_shifts_and_scales_defeat_a_layout_detector_but_not_an_invariant_one():
  size = 16
  y, g, x, xs, _ = blob_set(size, 3)
  assert xs.shape == (2, len(y), size, size)
  plan = holdout.jitter(len(y), 2, seed=1)
  assert max(abs(j[k]) for p in plan for j in p for k in ("dx", "dy")) <= 0.15
  assert all(0.8 <= j["scale"] <= 1.2 for p in plan for j in p)
  fl = holdout.folds(y, g)
  c = size // 2
  centre = holdout.choose_and_score(x[:, c - 1:c + 1, c - 1:c + 1].reshape(len(y), -1), y, g, fl,
                                    xs[:, :, c - 1:c + 1, c - 1:c + 1].reshape(2, len(y), -1))
  assert centre["auc"] > 0.95 and centre["shifted_auc"] < centre["auc"] - 0.15, centre
  peak = holdout.choose_and_score(x.max((1, 2))[:, None], y, g, fl, xs.max((2, 3))[..., None])
  assert peak["auc"] > 0.95 and peak["shifted_auc"] > 0.95, peak


def test_choosing_on_shifted_views_prefers_the_detector_that_holds_when_reframed():
  size = 16
  y, g, x, xs, rng = blob_set(size, 4)
  c = size // 2
  # column 0 keyed to the centre's layout (perfect as-is); column 1 invariant but noisier
  cols = np.c_[x[:, c, c], x.max((1, 2)) + rng.normal(0, 0.6, len(y))]
  views = np.stack([np.c_[v[:, c, c], v.max((1, 2)) + rng.normal(0, 0.6, len(y))] for v in xs])
  fl = holdout.folds(y, g)
  as_is = holdout.choose_and_score(cols, y, g, fl, views)
  both = holdout.choose_and_score(cols, y, g, fl, views, choose_shifted=True)
  assert [f["index"] for f in as_is["folds"]] == [0] * 3
  assert [f["index"] for f in both["folds"]] == [1] * 3
  assert both["shifted_auc"] > as_is["shifted_auc"] + 0.1 and as_is["auc"] > both["auc"], (as_is,
                                                                                          both)
  for f, r in zip(fl, both["folds"]):  # the choice's AUC: the selection images and their views
    s = f.select
    pooled = np.concatenate([cols[s], views[0][s], views[1][s]])
    want = holdout.balanced_auc(pooled, np.tile(y[s], 3), np.tile(g[s], 3))
    assert r["selection_auc"] == max(want.max(), 1 - want.min())
    # the test images' views take no part in it: change them and the choice stays
    other = views.copy()
    other[:, f.test] = rng.standard_normal(other[:, f.test].shape)
    assert holdout.score_fold(f, cols, y, g, other, choose_shifted=True)["index"] == r["index"]
  with pytest.raises(ValueError, match="choose_shifted needs the shifted views"):
    holdout.choose_and_score(cols, y, g, fl, None, choose_shifted=True)


def dets(unit, unit_s, **controls):
  """The unit's summary and every control of the bar (at chance unless given)."""
  out = {"face_unit": {"auc": unit, "shifted_auc": unit_s, "worst_auc": unit - 0.05,
                       "worst_auc_fold": "carphone", "worst_shifted_auc": unit_s - 0.05,
                       "worst_shifted_auc_fold": "lfw"}}
  controls = {**dict.fromkeys(holdout.BAR_CONTROLS, (0.5, 0.5)), **controls}
  out.update({k: {"auc": a, "shifted_auc": b} for k, (a, b) in controls.items() if a is not None})
  return out


def test_the_verdict_says_what_happened_in_each_case():
  ok = holdout.verdict(dets(0.92, 0.90, random_weights=(0.80, 0.78), single_pixel=(0.70, 0.6),
                            logistic_regression=(0.99, 0.99)))
  assert ok.startswith("A face unit emerged") and "+0.120 over the best unsupervised control " \
      "(random_weights)" in ok and "Supervised reference (not part of the bar): logistic_" \
      "regression 0.990" in ok and "worst source 0.870, carphone" in ok
  low = holdout.verdict(dets(0.80, 0.78, random_weights=(0.60, 0.6)))
  assert low.startswith("No face unit emerged") and "below 0.85" in low and "short of" not in low
  close = holdout.verdict(dets(0.90, 0.90, random_weights=(0.88, 0.8), single_pixel=(0.5, 0.5)))
  assert close.startswith("No face unit emerged")
  assert "as they are: AUC 0.900" in close and "+0.020 from random_weights 0.880, short of +0.05" \
      in close
  shifted = holdout.verdict(dets(0.95, 0.84, single_pixel=(0.6, 0.5)))
  assert shifted.startswith("No face unit emerged") and "scaled: AUC 0.840" in shifted
  assert shifted.count("below 0.85") == 1
  both = holdout.verdict(dets(0.84, 0.86, gradient_energy=(0.83, 0.6)))
  assert both.startswith("No face unit emerged")
  assert "AUC 0.840 (worst source 0.790, carphone); below 0.85 and +0.010 from gradient_energy " \
      "0.830, short of +0.05" in both and "scaled: AUC 0.860" in both and both.count("short") == 1
  assert "cannot be met" not in ok + low + close + shifted + both


def test_a_result_on_the_bar_meets_it_and_a_control_left_out_fails_it():
  """0.85 - 0.80 is 0.04999... in floating point: a lead of exactly the margin, and an AUC of
  exactly the target, meet the bar. A bar control that did not run (eval.linear_filters=0) cannot
  be beaten, so the unit cannot pass, and the verdict names it."""
  edge = holdout.verdict(dets(0.85, 0.85, single_pixel=(0.80, 0.80)))
  assert 0.85 - 0.80 < 0.05 and edge.startswith("A face unit emerged"), edge
  assert "+0.050 over the best unsupervised control (single_pixel)" in edge
  just_under = holdout.verdict(dets(0.85, 0.85, single_pixel=(0.80 + 1e-6, 0.80)))
  assert just_under.startswith("No face unit emerged") and "short of +0.05" in just_under
  left_out = holdout.verdict(dets(0.95, 0.95, linear_filters=(None, None)))
  assert left_out.startswith("No face unit emerged"), left_out
  assert "The bar cannot be met: the linear_filters control did not run" in left_out
  assert "short of" not in left_out and "below" not in left_out  # the scores themselves pass
  two = holdout.verdict(dets(0.95, 0.95, linear_filters=(None, None), random_weights=(None, None)))
  assert "the random_weights, linear_filters controls did not run" in two


def write_png(path, a):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.clip(a * 255, 0, 255).astype(np.uint8)).save(path)


def test_folders_give_a_labelled_set_by_sub_folder_and_the_whole_evaluation_runs(tmp_path):
  rng = np.random.default_rng(4)
  yy, xx = np.mgrid[:30, :24]
  blob = np.exp(-((yy - 14.5) ** 2 + (xx - 11.5) ** 2) / 30)
  for p in ("ann", "bob", "cyd"):  # "faces": a bright centre in noise; non-square images
    for i in range(12):
      write_png(tmp_path / "faces" / p / f"{i}.png", 0.1 + 0.8 * blob + 0.2 * rng.random((30, 24)))
  for q in ("street", "sky"):  # non-faces: noise
    for i in range(16):
      write_png(tmp_path / "non" / q / f"{i}.jpg", rng.random((30, 24)))
  write_png(tmp_path / "non" / "loose.png", rng.random((20, 20)))
  (tmp_path / "non" / "broken.png").write_text("not an image")
  with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\): .*broken.png"):
    ls = faces.from_folders(str(tmp_path / "faces"), str(tmp_path / "non"), 20)
  assert ls.images.shape == (36 + 33, 20, 20, 1) and ls.context.shape == (69, 40, 40)
  groups = holdout.source_groups(ls.source)
  assert sorted(set(groups[ls.labels == 1])) == ["ann", "bob", "cyd"]
  assert sorted(set(groups[ls.labels == 0])) == ["loose.png", "sky", "street"]
  assert set(ls.split[groups == "ann"]) == {"selection"} and set(ls.split[groups == "bob"]) == {"test"}
  cfg = model.preset("tiny")
  gen = evaluate.generalisation(cfg, model.create(cfg), ls, views=1)
  d = gen["detectors"]
  assert set(d) == {"face_unit", "random_weights", "single_pixel", "gradient_energy",
                    "logistic_regression"}
  assert [f["fold"] for f in gen["folds"]] == ["ann", "bob", "cyd"]
  assert d["single_pixel"]["auc"] > 0.9 and gen["verdict"].startswith("No face unit emerged")
  assert "the linear_filters control did not run" in gen["verdict"]  # no training crops given
  assert all(1 <= u["layer"] <= 3 for u in gen["unit_folds"])
  assert len(gen["per_layer"]) == 3
  for i, f in enumerate(d["face_unit"]["folds"]):  # choosing over all layers = the best layer's
    best = max(gen["per_layer"], key=lambda r: r["folds"][i]["selection_auc"])["folds"][i]
    assert f["selection_auc"] == pytest.approx(best["selection_auc"], rel=1e-12)
  assert gen["choose_shifted"] is False
  shift = evaluate.generalisation(cfg, model.create(cfg), ls, views=1, choose_shifted=True)
  assert shift["choose_shifted"] is True
  assert shift["detectors"]["logistic_regression"] == d["logistic_regression"]  # fitted as-is
  # every unsupervised detector chose on its selection images' views too, so each one's
  # selection AUCs are no longer those of the choice on the images as they are (gradient energy
  # separates these folders perfectly either way: 1.0 both times)
  for k in ("face_unit", "random_weights", "single_pixel"):
    assert any(f["selection_auc"] != h["selection_auc"]
               for f, h in zip(shift["detectors"][k]["folds"], d[k]["folds"])), k
  up = evaluate.generalisation(cfg, model.create(cfg), ls, views=1, unit_layers=(3, 2))
  assert up["unit_layers"] == [2, 3] and all(u["layer"] in (2, 3) for u in up["unit_folds"])
  assert "best unit in layers 2, 3 scores" in up["verdict"] and "in layers" not in gen["verdict"]
  for i, f in enumerate(up["detectors"]["face_unit"]["folds"]):  # = the better of layers 2 and 3
    best = max(gen["per_layer"][1:], key=lambda r: r["folds"][i]["selection_auc"])["folds"][i]
    assert f["selection_auc"] == pytest.approx(best["selection_auc"], rel=1e-12)
    assert f["test_auc"] == pytest.approx(best["test_auc"], rel=1e-12)
  for bad in ((0,), (4,), (2, 2)):
    with pytest.raises(ValueError, match="eval.unit_layers"):
      evaluate.generalisation(cfg, model.create(cfg), ls, views=1, unit_layers=bad)
  with pytest.raises(ValueError, match="does not exist"):
    faces.from_folders(str(tmp_path / "nope"), str(tmp_path / "non"), 20)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no readable images"):
    faces.from_folders(str(tmp_path / "faces"), str(tmp_path / "empty"), 20)
  for i in range(2):  # one sub-folder is one source, however many files it holds
    write_png(tmp_path / "one" / "ann" / f"{i}.png", rng.random((20, 20)))
  with pytest.raises(ValueError, match="faces from at least 2 sources"), pytest.warns(UserWarning):
    faces.from_folders(str(tmp_path / "one"), str(tmp_path / "non"), 20)



def test_a_sub_folder_named_in_both_folders_is_one_source(tmp_path):
  """faces/ann and nonfaces/ann are one source (e.g. one video's faces and other crops of its
  frames): its non-faces are tested with its faces, and never in another fold's test, where
  a choice made on them could be scored on them."""
  rng = np.random.default_rng(5)
  for q, label in (("ann", "faces"), ("bob", "faces"), ("ann", "non"), ("sky", "non"),
                   ("street", "non")):
    for i in range(3):
      write_png(tmp_path / label / q / f"{i}.png", rng.random((20, 20)))
  ls = faces.from_folders(str(tmp_path / "faces"), str(tmp_path / "non"), 16)
  g = holdout.source_groups(ls.source)
  assert sorted(set(g)) == ["ann", "bob", "sky", "street"]
  ann_non = (g == "ann") & (ls.labels == 0)
  assert ann_non.sum() == 3
  for fold in holdout.folds(ls.labels, g):
    assert fold.test[ann_non].all() if fold.name == "ann" else not fold.test[ann_non].any()
    assert not (fold.test & fold.select).any()
