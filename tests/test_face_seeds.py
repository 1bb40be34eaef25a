"""benchmarks/face_seeds.py: the seed study's runner and its rule, on run directories whose
metrics.json are written here with known AUCs (the layout `experiments.youtube_faces` writes,
asserted by test_experiment's end-to-end test)."""
import json
import os
import sys

import pytest

from benchmarks import face_seeds

CONTROLS = {"random_weights": (0.70, 0.58), "single_pixel": (0.78, 0.62),
            "linear_filters": (0.66, 0.60), "gradient_energy": (0.53, 0.58),
            "logistic_regression": (0.81, 0.64)}


def _summary(auc, shifted):
  """A detector's summary as `holdout.summary` writes it, with a fold list `export` must drop."""
  return {"auc": auc, "shifted_auc": shifted, "worst_auc": auc - 0.1, "worst_auc_fold": "lfw",
          "folds": [{"fold": "lfw", "test_auc": auc - 0.1, "index": 7}]}


def _write(root, name, seed, unit, linear=None, per_layer=None):
  d = face_seeds.run_dir(str(root), name, seed)
  os.makedirs(d)
  dets = {k: _summary(a, b) for k, (a, b) in CONTROLS.items()}
  if linear:
    dets["linear_filters"] = _summary(*linear)
  dets["face_unit"] = _summary(*unit)
  per_layer = per_layer or [unit, (0.5, 0.5), (0.5, 0.5)]
  with open(os.path.join(d, "metrics.json"), "w") as f:
    json.dump({"generalisation": {"detectors": dets, "unit_layers": [1, 2, 3],
                                  "per_layer": [_summary(*u) for u in per_layer]},
               "face_unit": {"test_auc": 0.9}}, f)


def _study(root, rows):
  with open(root / "settings.json", "w") as f:
    json.dump({name: [] for name in rows}, f)
  for name, units in rows.items():
    for seed, unit in enumerate(units):
      if unit is not None:
        _write(root, name, seed, unit)


def test_the_rule_counts_seed_by_seed_gains_and_means(tmp_path):
  base = [(0.60, 0.60), (0.70, 0.60), (0.65, 0.62), (0.72, 0.61), (0.61, 0.59)]
  _study(tmp_path, {
      "base": base,
      # gains on seeds 0, 1, 2 both ways, loses on 3 and 4: mean up, 3 of 5: qualifies
      "small win": [(0.62, 0.61), (0.71, 0.62), (0.66, 0.63), (0.70, 0.60), (0.60, 0.58)],
      # a large mean gain from one seed, losses elsewhere: 1 of 5, does not qualify
      "one lucky seed": [(0.95, 0.95), (0.69, 0.59), (0.64, 0.61), (0.71, 0.60), (0.60, 0.58)],
      # qualifies with a larger sum of means than "small win"
      "big win": [(0.70, 0.70), (0.75, 0.70), (0.70, 0.70), (0.70, 0.60), (0.60, 0.58)],
      # only seeds 0 and 1 finished: gains on both, but too few seeds to judge
      "partial": [(0.71, 0.71), (0.81, 0.71), None, None, None]})
  runs = face_seeds.load(str(tmp_path))
  v = face_seeds.judge(runs, "base", min_gains=3)
  assert v["small win"]["gains"] == (3, 3) and v["small win"]["qualifies"]
  assert v["one lucky seed"]["gains"] == (1, 1) and not v["one lucky seed"]["qualifies"]
  assert v["one lucky seed"]["mean"][0] > v["base"]["mean"][0]  # the mean alone would adopt it
  assert v["partial"]["common"] == [0, 1] and v["partial"]["gains"] == (2, 2)
  assert v["partial"]["qualifies"] is None
  assert v["big win"]["mean"] == pytest.approx((3.45 / 5, 3.28 / 5))
  # paired differences of "small win" as-is: +.02 +.01 +.01 -.02 -.01, mean +0.002, sample
  # variance (.018^2 + .008^2 * 2 + .022^2 + .012^2) / 4 = 0.0002700
  (m, se), _ = v["small win"]["difference"]
  assert m == pytest.approx(0.002) and se == pytest.approx((0.00027 / 5) ** 0.5)
  # the unit's margin over the best unsupervised control, per seed: seed 0 of base is
  # 0.60 - 0.78 (the pixel) as-is and 0.60 - 0.62 shifted
  assert v["base"]["margin_over_unsupervised"][0] == pytest.approx((-0.18, -0.02))
  text = face_seeds.table(str(tmp_path), "base", 3)
  assert "To adopt: big win." in text and "| one lucky seed |" in text and "too few seeds" in text
  assert text.splitlines()[2].endswith("| 0.660 / 0.600 |  |")  # the baseline: no verdict
  assert "| 0.950 / 0.950 |" in text and "1/5, 1/5" in text and "+0.002 +- 0.007" in text
  with pytest.raises(ValueError, match="no finished run of the baseline 'nope'"):
    face_seeds.judge(runs, "nope", 3)


def _fake_experiment(started, failing_seed=None):
  """A stand-in for `face_seeds.command`, logging (name, seed) into `started`: a training run
  writes its metrics.json (seed 0 a little late; `failing_seed` exits 1 instead); a rescoring
  copies its source's, so it can only succeed if the source had finished when it started."""
  def fake(name, overrides, seed, root, core, python=sys.executable):
    started.append((name, seed))
    d = face_seeds.run_dir(root, name, seed)
    src = face_seeds.rescored_from(overrides)
    if src is None:
      fail = seed == failing_seed
      return [python, "-c", f"import json, os, sys, time; time.sleep(0.2 * {seed == 0}); "
                            f"os.makedirs({d!r}); sys.exit(1) if {fail} else "
                            f"json.dump({{'generalisation': {{'detectors': {{}}}}}}, "
                            f"open(os.path.join({d!r}, 'metrics.json'), 'w'))"]
    m = os.path.join(face_seeds.run_dir(root, src, seed), "metrics.json")
    return [python, "-c", f"import os, shutil; os.makedirs({d!r}); "
                          f"shutil.copy({m!r}, os.path.join({d!r}, 'metrics.json'))"]
  return fake


def test_settings_are_named_and_a_name_keeps_its_overrides(tmp_path, monkeypatch):
  assert face_seeds.parse_setting("base=") == ("base", [])
  assert face_seeds.parse_setting("lam 0.3=--config.model.lam=0.3 --preset tiny") == (
      "lam 0.3", ["--config.model.lam=0.3", "--preset", "tiny"])
  for bad in ("no equals sign", "=--config.a=1", "a/b=", ".hidden="):
    with pytest.raises(ValueError, match="must be NAME=OVERRIDES"):
      face_seeds.parse_setting(bad)
  cmd = face_seeds.command("lam 0.3", ["--preset", "tiny"], 2, "/r", core=None, python="py")
  assert cmd == ["py", "-m", "experiments.youtube_faces", "--workdir", "/r/lam_0.3_s2",
                 "--config.train.seed=2", "--preset", "tiny"]

  started = []
  monkeypatch.setattr(face_seeds, "command", _fake_experiment(started))
  settings = [("base", []), ("lam", ["--config.model.lam=0.3"])]
  done = face_seeds.run(str(tmp_path), settings, [0, 1], cores=[None, None])
  assert sorted(done) == [("base", 0, 0), ("base", 1, 0), ("lam", 0, 0), ("lam", 1, 0)]
  assert started[:2] in ([("base", 0), ("lam", 0)], [("lam", 0), ("base", 0)])  # seed-major
  started.clear()
  assert face_seeds.run(str(tmp_path), settings, [0, 1, 2], cores=[None]) == [
      ("base", 2, 0), ("lam", 2, 0)]  # finished runs are not run again
  with pytest.raises(ValueError, match="'lam' ran in .* with \\['--config.model.lam=0.3'\\]"):
    face_seeds.run(str(tmp_path), [("lam", ["--config.model.lam=0.1"])], [0], cores=[None])
  with pytest.raises(ValueError, match="share run directories"):
    face_seeds.run(str(tmp_path), [("a b", []), ("a_b", [])], [0], cores=[None])


def test_runs_started_together_wait_for_each_other_and_keep_every_setting(tmp_path, monkeypatch):
  """One `run` per core, started together, is how a study runs; their read-modify-write of
  settings.json once let one read the other's half-written file and stop. Now each waits for the
  other's lock, writes atomically, and the file keeps both settings. Held here by the test: a run
  must not touch settings.json until the lock is released."""
  import fcntl
  import threading
  import time
  monkeypatch.setattr(face_seeds, "command", _fake_experiment([]))
  face_seeds.run(str(tmp_path), [("base", [])], [1], cores=[None])
  with open(tmp_path / "settings.lock", "w") as held:
    fcntl.flock(held, fcntl.LOCK_EX)
    t = threading.Thread(target=face_seeds.run,
                         args=(str(tmp_path), [("lam", ["--config.model.lam=0.3"])], [1], [None]))
    t.start()
    time.sleep(0.5)
    assert t.is_alive() and json.loads((tmp_path / "settings.json").read_text()) == {"base": []}
  t.join(timeout=60)
  assert not t.is_alive()
  assert json.loads((tmp_path / "settings.json").read_text()) == {
      "base": [], "lam": ["--config.model.lam=0.3"]}
  assert os.path.exists(face_seeds.run_dir(str(tmp_path), "lam", 1) + "/metrics.json")
  assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]


def test_a_rescoring_setting_scores_its_sources_runs_after_every_training_run(tmp_path, monkeypatch):
  assert face_seeds.parse_setting("cs=@base --config.eval.choose_shifted=True") == (
      "cs", ["@base", "--config.eval.choose_shifted=True"])
  for bad in ("cs=@base --config.model.maps=16", "cs=@base --config.eval.top_k 4", "cs=@",
              "cs=@cs"):
    with pytest.raises(ValueError, match="NAME=@SOURCE followed by --config.eval.KEY=VALUE"):
      face_seeds.parse_setting(bad)
  cmd = face_seeds.command("cs", ["@base", "--config.eval.top_k=4"], 3, "/r", core=None,
                           python="py")
  assert cmd == ["py", "-m", "experiments.youtube_faces", "--workdir", "/r/base_s3",
                 "--score-into", "/r/cs_s3", "--config.eval.top_k=4"]

  started = []  # training of seed 1 fails
  monkeypatch.setattr(face_seeds, "command", _fake_experiment(started, failing_seed=1))
  settings = [("cs", ["@base", "--config.eval.top_k=4"]), ("base", [])]
  with pytest.raises(ValueError, match="'cs' scores 'base'.*not a training setting"):
    face_seeds.run(str(tmp_path), settings[:1], [0], cores=[None])
  done = face_seeds.run(str(tmp_path), settings, [0, 1, 2], cores=[None, None])
  # every training run first, whatever the order the settings were given in
  assert set(started[:3]) == {("base", 0), ("base", 1), ("base", 2)}
  assert sorted(done, key=str) == sorted([("base", 0, 0), ("base", 1, 1), ("base", 2, 0),
                                          ("cs", 0, 0), ("cs", 1, None), ("cs", 2, 0)], key=str)
  assert sorted(face_seeds.load(str(tmp_path))) == ["base", "cs"]
  with open(tmp_path / "settings.json") as f:
    assert json.load(f)["cs"] == ["@base", "--config.eval.top_k=4"]


def test_an_exported_study_is_judged_like_its_directories(tmp_path):
  """`export` keeps the rule's inputs (no folds) in one file; `table` reads it like the study's
  directories, takes a baseline from another study, and judges one layer's best unit."""
  base = [(0.60, 0.60), (0.70, 0.60), (0.65, 0.62)]
  lever = [(0.62, 0.61), (0.71, 0.62), (0.66, 0.63)]
  _study(tmp_path, {"base": base, "lever": lever})
  out = tmp_path / "study.json"
  study = face_seeds.export(str(tmp_path), str(out), note="a test")
  assert study["note"] == "a test" and study["settings"] == {"base": [], "lever": []}
  assert "folds" not in out.read_text() and out.stat().st_size < 20_000
  assert study["runs"]["lever"]["2"]["detectors"]["face_unit"]["worst_auc_fold"] == "lfw"
  assert face_seeds.load(str(out)) == face_seeds.load(str(tmp_path))
  assert face_seeds.table(str(out), "base", 3) == face_seeds.table(str(tmp_path), "base", 3)
  assert "To adopt: lever." in face_seeds.table(str(out), "base", 3)
  # carried on in a later session: the export of seeds 0-1 and the directory of seed 2 together
  first, rest = tmp_path / "first", tmp_path / "rest"
  first.mkdir()
  rest.mkdir()
  _study(first, {"base": base[:2], "lever": lever[:2]})
  _study(rest, {"base": [None, None, base[2]], "lever": [None, None, lever[2]]})
  face_seeds.export(str(first), str(tmp_path / "first.json"), note="seeds 0-1")
  both = [str(tmp_path / "first.json"), str(rest)]
  assert face_seeds.table(both, "base", 3) == face_seeds.table(str(tmp_path), "base", 3)
  with pytest.raises(ValueError, match="'base' seed 2 is in both"):
    face_seeds.load([str(out), str(rest)])

  # a later study on other seeds' directories, judged against the export's baseline
  later = tmp_path / "later"
  later.mkdir()
  with open(later / "settings.json", "w") as f:
    json.dump({"wider": ["--config.model.maps=12"]}, f)
  _write(later, "wider", 0, (0.50, 0.70), per_layer=[(0.50, 0.50), (0.66, 0.66), (0.5, 0.5)])
  _write(later, "wider", 1, (0.75, 0.50), per_layer=[(0.75, 0.50), (0.80, 0.70), (0.5, 0.5)])
  _write(later, "wider", 2, (0.72, 0.70), per_layer=[(0.72, 0.70), (0.60, 0.50), (0.5, 0.5)])
  v = face_seeds.judge(face_seeds.load(str(later)) | {"base": face_seeds.load(str(out))["base"]},
                       "base", 3)
  assert v["wider"]["gains"] == (2, 2) and v["wider"]["qualifies"] is False
  text = face_seeds.table(str(later), "base", 2, baseline_from=str(out))
  # as-is -0.10 +0.05 +0.07, shifted +0.10 -0.10 +0.08: both means rise, 2 of 3 seeds each way
  assert v["wider"]["difference"][0][0] == pytest.approx(0.02 / 3)
  assert v["wider"]["difference"][1][0] == pytest.approx(0.08 / 3)
  assert "| wider | 0.500 / 0.700 | 0.750 / 0.500 | 0.720 / 0.700 |" in text
  assert "2/3, 2/3" in text and "To adopt: wider." in text  # 2 gains suffice at min_gains 2
  # layer 2's best unit: 0.66 / 0.80 / 0.60 as-is against layer 2 of base (0.5 everywhere)
  by_layer = face_seeds.judge(face_seeds.load(str(later), layer=2)
                              | {"base": face_seeds.load(str(out), layer=2)["base"]}, "base", 3)
  assert by_layer["wider"]["seeds"][1] == (0.80, 0.70) and by_layer["wider"]["gains"] == (3, 2)
  assert "best unit of layer 2 alone" in face_seeds.table(str(later), "base", 3, layer=2,
                                                           baseline_from=str(out))
  with pytest.raises(ValueError, match="--layer 4: .* has layers 1 to 3"):
    face_seeds.load(str(out), layer=4)
  with pytest.raises(ValueError, match="no finished run of the baseline 'base' in"):
    face_seeds.table(str(later), "base", 3, baseline_from=str(later))
  with pytest.raises(ValueError, match="one .json file"):
    face_seeds.export(str(tmp_path), str(tmp_path / "study.txt"), note="")
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "settings.json").write_text("{}")
  with pytest.raises(ValueError, match="no finished run under"):
    face_seeds.export(str(empty), str(tmp_path / "e.json"), note="")
  assert not (tmp_path / "e.json").exists()
