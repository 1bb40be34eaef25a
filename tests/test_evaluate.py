"""Evaluation: AUC and thresholds against naive references; the unit search finds a planted unit;
the labelled set is hardened and split by source; the whole report runs and reloads from disk."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_reordered_close, naive_auc

from lcnet import checkpoint, evaluate, face_archives, faces, holdout, model, plots, runs, train, units


def test_auc_matches_the_pairwise_definition_with_ties():
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 60)
  s = np.round(rng.standard_normal((60, 5)) + y[:, None] * np.arange(5), 1)  # ties on purpose
  np.testing.assert_allclose(evaluate.auc(s, y), [naive_auc(s[:, j], y) for j in range(5)])
  np.testing.assert_allclose(evaluate.auc(s, y, chunk=2), evaluate.auc(s, y))
  with pytest.raises(ValueError, match="both classes"):
    evaluate.auc(s, np.ones(60))


def test_best_threshold_is_the_best_of_all_thresholds():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 40)
  s = np.round(rng.standard_normal(40) + y, 1)
  thr, acc = evaluate.best_threshold(s, y)
  brute = max(np.mean((s > t) == y) for t in np.r_[s, s.min() - 1])
  assert acc == pytest.approx(brute) and evaluate.accuracy(s, y, thr) == pytest.approx(acc)


def test_choose_selects_on_selection_only_and_keeps_the_sign():
  rng = np.random.default_rng(2)
  y = np.r_[np.ones(30), np.zeros(30)].astype(int)
  sel = rng.standard_normal((60, 10))
  sel[:, 7] -= 3 * y  # column 7 is a "non-face" detector on the selection split
  test = rng.standard_normal((60, 10))
  test[:, 7] -= 3 * y
  test[:, 2] += 9 * y  # better on test, but selection never sees it
  c = evaluate.choose(sel, y, test, y)
  assert (c["index"], c["sign"]) == (7, -1.0) and c["test_auc"] > 0.95
  assert c["test_accuracy"] > 0.85


def planted(size=20, loc=(6, 9), m=2, seed=0):
  """The tiny net with layer-1 map m at `loc` replaced by a pattern template, and images: noise,
  plus the pattern there for the "faces"."""
  cfg = model.preset("tiny")
  net = model.create(cfg, seed=seed)
  rng = np.random.default_rng(seed)
  k = net.layer1.encoder.kernel[...]  # [Ho, Wo, kh, kw, C, F]
  pattern = np.zeros(k.shape[2:4], np.float32)
  pattern[1:4, 1:4] = [[1, -1, 1], [-1, 1, -1], [1, -1, 1]]
  net.layer1.encoder.kernel[...] = k.at[loc[0], loc[1], :, :, 0, m].set(
      jnp.asarray(pattern / np.linalg.norm(pattern)))

  def images(n):
    y = np.r_[np.ones(n // 2), np.zeros(n - n // 2)].astype(int)
    x = 0.3 * rng.standard_normal((n, size, size, 1)).astype(np.float32)
    x[y == 1, loc[0]:loc[0] + 5, loc[1]:loc[1] + 5, 0] += 1.5 * pattern
    return units.normalise(x, size, 1), y

  return cfg, net, images


def test_search_finds_the_planted_unit():
  cfg, net, images = planted()
  (xs, ys), (xt, yt) = images(80), images(80)
  u = evaluate.search_units(net, xs, ys, xt, yt)
  pool = cfg.model.layers[0].pool_size
  assert u["layer"] == 1 and u["map"] == 2 and u["sign"] == 1.0
  assert 6 - pool < u["location"][0] <= 6 and 9 - pool < u["location"][1] <= 9
  assert u["test_auc"] > 0.99 and u["test_accuracy"] > 0.95
  up = evaluate.search_units(net, xs, ys, xt, yt, unit_layers=(2,))  # never the layer-1 unit
  assert up["layer"] == 2 and up["index"] == u["per_layer"][1]["index"]
  # the batched, jitted response vs the module called eagerly: two programs, the same sums
  assert_reordered_close(units.unit_response(net, u, xt[:5]),
                         np.asarray(net(jnp.asarray(xt[:5]))[0])[:, *u["location"], 2], n=20 * 20 * 4)
  s = units.optimal_stimulus(net, u, steps=60, starts=2)
  assert s["image"].shape == (20, 20, 1)
  np.testing.assert_allclose(np.linalg.norm(s["image"]), 20, rtol=1e-4)
  assert s["activation"] >= np.max(u["sign"] * units.unit_response(net, u, xt)) - 1e-3


def test_labelled_set_is_hardened_and_split_by_source():
  ls = faces.labelled_set(20, pool_factor=4, still_views=2)
  c = ls.counts()
  assert c["selection"]["faces"] >= 100 and c["test"]["faces"] >= 50
  assert c["test"]["nonfaces"] == 2 * c["test"]["faces"]
  assert not set(ls.source[ls.split == "selection"]) & set(ls.source[ls.split == "test"])
  if face_archives.available():  # every box of every archive image, each archive in one split
    groups = holdout.source_groups(ls.source)
    for src in face_archives.ARCHIVES:
      n = sum(len(b) for s, _, b in face_archives.FACES if s == src)
      assert int(np.sum((groups == src) & (ls.labels == 1))) == n
      assert len(set(ls.split[groups == src])) == 1
  assert ls.images.shape[1:] == (20, 20, 1) and ls.context.shape[1:] == (40, 40)
  np.testing.assert_allclose(ls.context[:, 10:30, 10:30], ls.images[..., 0], atol=1e-5)
  for split in ("selection", "test"):
    m = ls.split == split
    for name, f in faces.trivial_features(ls.images[m]).items():
      a = evaluate.auc(f, ls.labels[m])[0]
      assert 0.3 < a < 0.7, (split, name, a)
  # ... while on skimage's lfw_subset alone gradient energy gives the classes away
  x, y = faces.lfw_subset()
  a = evaluate.auc(faces.trivial_features(x)["gradient_energy"], y)[0]
  assert max(a, 1 - a) > 0.95, a


def test_evaluate_report_plots_and_load_run(tmp_path):
  cfg, net, images = planted()
  rng = np.random.default_rng(3)
  xs, ys = images(60)
  lset = faces.LabelledSet(
      images=np.r_[xs, images(60)[0]], labels=np.r_[ys, ys],
      split=np.array(["selection"] * 60 + ["test"] * 60), source=np.arange(120).astype(str),
      context=rng.standard_normal((120, 40, 40)).astype(np.float32))
  crops = rng.standard_normal((50, 20, 20, 1)).astype(np.float32)
  rep = evaluate.evaluate(cfg, net, lset, crops, stimulus_steps=20)
  m = evaluate.metrics(rep)
  json.dumps(m)
  u = m["face_unit"]
  assert u["layer"] == 1 and u["map"] == 2 and u["test_auc"] > 0.99
  assert set(m["controls"]) == {"random_weights", "linear_filters", "single_pixel",
                                "gradient_energy", "logistic_regression"}
  assert all(0 <= v["test_auc"] <= 1 for v in m["controls"].values())
  assert set(m["invariance"]) == set(units.INVARIANCES) and "response" in m["cat"]
  for fig in (plots.filters(runs.model_params(net)), plots.stimulus(rep), plots.top_k(rep),
              plots.histogram(rep), plots.roc(rep["roc"], {"face_unit": u["test_auc"]}),
              plots.invariance(rep)):
    fig.savefig(tmp_path / "f.png")

  run = tmp_path / "run"
  state = train.init_state(cfg).replace(params=runs.model_params(net))
  with checkpoint.Checkpointer(str(run), cfg) as ckpt:  # the one parameter format
    ckpt.save(0, state, force=True)
  (run / "config.json").write_text(cfg.to_json())
  (run / "metrics.json").write_text(json.dumps(m))
  loaded = runs.load_run(str(run))
  assert loaded.config == cfg and loaded.unit["map"] == 2
  faces_u8 = (np.clip(xs[:4, ..., 0] * 40 + 128, 0, 255)).astype(np.uint8)
  big = np.kron(faces_u8, np.ones((1, 3, 3), np.uint8))  # 60x60: resized back to 20x20
  np.testing.assert_allclose(loaded.respond(big), loaded.respond(faces_u8), atol=0.2)
  np.testing.assert_allclose(loaded.respond(faces_u8),
                             units.unit_response(net, u, units.normalise(faces_u8, 20, 1)),
                             rtol=1e-5, atol=1e-6)


def test_by_source_scores_each_face_source_against_every_nonface():
  labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
  sources = np.array(["lfw/0", "lfw/1", "carphone", "carphone", "a", "b", "c", "d"])
  s = np.array([9.0, 8.0, 0.5, 2.5, 1.0, 2.0, 3.0, 4.0])  # lfw above all; carphone mid-pack
  got = evaluate.by_source({"unit": s, "flipped": -s}, labels, sources)
  assert list(got) == ["carphone", "lfw"]
  assert got["lfw"] == {"faces": 2, "unit": 1.0, "flipped": 0.0}
  # carphone 0.5 beats no non-face, 2.5 beats two of four: (0 + 2) / 8
  assert got["carphone"]["faces"] == 2 and got["carphone"]["unit"] == 0.25


def test_the_evaluation_runs_blas_on_the_threads_asked_and_restores_them(monkeypatch):
  """`evaluate` limits NumPy's and SciPy's BLAS to `threads` while it runs (one by default: 2.1x
  faster on 2 cores) and gives back the caller's setting after, also when it fails."""
  from threadpoolctl import threadpool_info, threadpool_limits

  def blas():
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
  seen = []

  def spy(*args, **kw):
    seen.append(blas())
    raise KeyboardInterrupt  # stops the evaluation here
  monkeypatch.setattr(evaluate, "_evaluate", spy)
  with threadpool_limits(limits=3, user_api="blas"):
    assert blas() == {3}
    for threads, want in ((evaluate.BLAS_THREADS, {1}), (2, {2}), (None, {3})):
      with pytest.raises(KeyboardInterrupt):
        evaluate.evaluate(None, None, None, threads=threads)
      assert seen.pop() == want and blas() == {3}
