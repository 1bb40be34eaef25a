"""The experiment entry point: config overrides, and the whole pipeline end to end on `tiny`."""
import html
import json
import platform

import pytest
from numerics import assert_reordered_close

from experiments import youtube_faces
from lcnet import config, face_archives, faces, hostmem, runs


def test_layer_fields_take_one_value_or_one_per_layer():
  c = youtube_faces.get_config()  # cpu_default: 16 maps in every layer, the preset's strides
  youtube_faces.apply_overrides(c, ["model.stride=2,1,1", "model.pool_stride=1,1,2", "model.lam=0.3"])
  layers = youtube_faces.lcnet_config(c).model.layers
  assert [(l.stride, l.pool_stride, l.maps, l.lam) for l in layers] == [
      (2, 1, 16, 0.3), (1, 1, 16, 0.3), (1, 2, 16, 0.3)]
  assert [l.rf for l in layers] == [8, 8, 6]  # unset: the preset's, layer by layer
  # each layer's own strides: (48 - 8) // 2 + 1 = 21, pooled 3 -> 19; ...; layer 3's pool:
  # (5 - 3) // 2 + 1 = 2
  assert [g.pool_hw for g in config.geometry(youtube_faces.lcnet_config(c).model)] == [
      (19, 19), (10, 10), (2, 2)]
  for bad, why in ((["model.stride=2,1"], r"model.stride=2,1 gives 2 values for a model of 3 "
                    r"layers; give one value for every layer or 3"),
                   (["model.depth=2", "model.maps=8,8,8"], "3 values for a model of 2 layers"),
                   (["model.maps=1.5"], r"model.maps=1.5: 1.5 is not a whole number")):
    k = youtube_faces.get_config()
    youtube_faces.apply_overrides(k, bad)
    with pytest.raises(ValueError, match=why):
      youtube_faces.lcnet_config(k)
  # a field set twice takes the last value, a tuple field too (absl alone would join (8, 16))
  k = youtube_faces.get_config()
  youtube_faces.apply_overrides(k, ["model.maps=8", "--config.data.crop_scale", "1,2",
                                    "--config.model.maps", "12", "data.crop_scale=1,3"])
  assert (k.model.maps, tuple(k.data.crop_scale)) == ((12,), (1, 3))
  with pytest.raises(SystemExit, match="invalid settings.*layer 3: receptive field 6 is larger"):
    youtube_faces.main(["--print-config", "--config.model.stride=2"])  # caught before any data


def test_a_run_saved_before_the_per_layer_fields_is_read_as_it_ran():
  old = youtube_faces.get_config().to_dict()  # an experiment.json of before: a number, or null
  old["model"].update(maps=16, rf=None, stride=None, pool_size=None, pool_stride=None,
                      lcn_size=None, lam=0.3)
  layers = youtube_faces.lcnet_config(youtube_faces.saved_config(old)).model.layers
  assert [(l.maps, l.rf, l.lam) for l in layers] == [(16, 8, 0.3), (16, 8, 0.3), (16, 6, 0.3)]
  new = youtube_faces.get_config()
  youtube_faces.apply_overrides(new, ["model.maps=16,24,16"])
  saved = json.loads(new.to_json())  # as a run writes it now: per-layer lists
  assert youtube_faces.saved_config(saved).model.maps == (16, 24, 16)


def test_the_linear_filter_control_samples_the_presets_crops_on_request(monkeypatch):
  from lcnet import data
  asked = []
  monkeypatch.setattr(data, "source", lambda cfg, d, *ix, **kw: asked.append((d, kw)) or "preset crops")
  c = youtube_faces.get_config()  # cpu_default: whole 48-px frames, 48 per video, no jitter
  youtube_faces.apply_overrides(c, ["data.short_side=96", "data.crop_scale=1,2",
                                    "data.frames_per_video=7", "data.dir=/videos"])
  cfg = youtube_faces.lcnet_config(c)
  assert youtube_faces.control_source(c, cfg, "training crops") == "training crops"  # the default
  youtube_faces.apply_overrides(c, ["eval.control_crops=preset"])
  assert youtube_faces.control_source(c, cfg, "training crops") == "preset crops"
  (d, kw), = asked  # the preset's data settings, on the user's footage
  assert d == "/videos" and kw["short_side"] == 48 and kw["frames_per_video"] == 48
  assert tuple(kw["crop_scale"]) == (1.0, 1.0)
  k = youtube_faces.get_config()  # the preset's own settings: the training crops are those
  youtube_faces.apply_overrides(k, ["eval.control_crops=preset"])
  assert youtube_faces.control_source(k, cfg, "training crops") == "training crops"
  assert len(asked) == 1
  youtube_faces.apply_overrides(k, ["eval.control_crops=default"])
  with pytest.raises(ValueError, match=r"eval.control_crops='default' is not one of \('training', "
                                       r"'preset'\)"):
    youtube_faces.lcnet_config(k)


def test_config_overrides_are_typed_and_checked():
  c = youtube_faces.get_config("tiny")
  youtube_faces.apply_overrides(c, ["model.maps=6", "train.learning_rate=1", "eval.enabled=False",
                                    "data.dir=/some/where"])
  assert c.model.maps == (6,) and c.train.learning_rate == 1.0 and c.eval.enabled is False
  assert c.data.dir == "/some/where"
  cfg = youtube_faces.lcnet_config(c)
  assert all(l.maps == 6 for l in cfg.model.layers) and cfg.train.learning_rate == 1.0
  for bad, why in (["model.mapz=3"], r"mapz.*maps.*fields here: \[.*'lam', 'lcn_size'"), \
                  (["modle.maps=3"], r"modle.*model"), (["train.steps=many"], "train.steps=many"), \
                  (["eval.enabled=maybe"], "enabled=maybe"):
    with pytest.raises(SystemExit, match=why):
      youtube_faces.apply_overrides(youtube_faces.get_config("tiny"), bad)
  # both spellings of ml_collections' config flags, mixed with the script's own arguments
  over, rest = youtube_faces.split_config_args(["--preset", "tiny", "--config.train.steps", "9",
                                                "--config.model.local_op.contract=einsum"])
  assert rest == ["--preset", "tiny"]
  c = youtube_faces.get_config("tiny")
  youtube_faces.apply_overrides(c, over)
  assert c.train.steps == 9 and youtube_faces.lcnet_config(c).model.local_op.contract == "einsum"
  youtube_faces.apply_overrides(c, ["train.profile_steps=(2, 4)", "model.compute_dtype=bfloat16"])
  assert youtube_faces.lcnet_config(c).train.profile_steps == (2, 4)
  assert youtube_faces.lcnet_config(c).model.compute_dtype == "bfloat16"
  with pytest.raises(SystemExit, match="invalid settings.*rf"):  # caught before any data or compile
    youtube_faces.main(["--preset", "tiny", "--config.model.rf=30"])
  c = youtube_faces.get_config("cpu_default")
  youtube_faces.apply_overrides(c, ["model.depth=2"])  # the unit's default layers 2-3 need a third
  with pytest.raises(ValueError, match=r"eval.unit_layers=\(2, 3\): the model has 2 layers; .*1..2"):
    youtube_faces.lcnet_config(c)
  youtube_faces.apply_overrides(c, ["eval.unit_layers=2,"])
  assert len(youtube_faces.lcnet_config(c).model.layers) == 2
  with pytest.raises(SystemExit, match="model.depth=4.*give 1..3"):
    youtube_faces.main(["--print-config", "--config.model.depth=4"])
  # malloc's heap is kept by default on a one-device mesh only (measured faster there, slower on 2x2)
  assert youtube_faces.keep_heap_wanted(youtube_faces.get_config()) == (True, "a mesh of 1 device")
  for over, want in ((["mesh.rows=2", "mesh.cols=2"], False), (["mesh.data=2"], False),
                     (["mesh.rows=2", "host.keep_heap=True"], True), (["host.keep_heap=False"], False)):
    k = youtube_faces.get_config()
    youtube_faces.apply_overrides(k, over)
    assert youtube_faces.keep_heap_wanted(k)[0] is want, over
  youtube_faces.apply_overrides(c, ["data.crop_scale=1,3"])
  assert tuple(c.data.crop_scale) == (1, 3)
  with pytest.raises(SystemExit, match=r"invalid settings: crop scale \(0.5, 2\) must be"):
    youtube_faces.main(["--print-config", "--config.data.crop_scale=0.5,2"])
  with pytest.raises(SystemExit,
                     match=r"data.short_side=48 is smaller than the 64x64 crop \(model.image_size=64\)"):
    youtube_faces.main(["--print-config", "--config.model.image_size=64"])  # the preset's 48 px
  k = youtube_faces.get_config()  # a learning-rate factor per layer, floats in the Config
  youtube_faces.apply_overrides(k, ["train.layer_lr_scale=1,0.25,0.333"])
  assert youtube_faces.lcnet_config(k).train.layer_lr_scale == (1.0, 0.25, 0.333)
  with pytest.raises(SystemExit, match=r"train.layer_lr_scale has 2 entries for 3 layers"):
    youtube_faces.main(["--print-config", "--config.train.layer_lr_scale=1,0.25"])


def test_youtube_faces_tiny_end_to_end(tmp_path, capsys):
  out = youtube_faces.main(["--preset", "tiny", "--workdir", str(tmp_path)])
  text = capsys.readouterr().out
  assert "trained: 6 steps" in text and "leave-one-source-out AUC" in text and "report:" in text
  assert "split view: face unit layer" in text
  # by default the run asks malloc to keep XLA's per-step buffers on the heap (lcnet.hostmem;
  # recorded here, not applied: conftest.malloc_untouched) and says whether it took
  assert hostmem.keep_heap.calls == 1
  assert ("host: malloc keeps XLA's buffers on the heap" in text) == \
      (platform.libc_ver()[0] == "glibc")
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 5 and all(r["total"] > 0 for r in rows)
  m = json.loads((tmp_path / "metrics.json").read_text())
  u = m["face_unit"]
  assert {"layer", "location", "map", "test_auc", "test_accuracy"} <= set(u)
  assert {"random_weights", "linear_filters", "single_pixel", "logistic_regression"} <= \
      set(m["controls"]) and all(0 <= v["test_auc"] <= 1 for v in m["controls"].values())
  assert out["face_unit"] == u
  g = m["generalisation"]  # the headline: leave-one-source-out, as-is and shifted/scaled
  sources = {"lfw", "carphone", "astronaut", "grace_hopper"}
  sources |= set(face_archives.ARCHIVES) if face_archives.available() else set()
  assert {f["fold"] for f in g["folds"]} == sources
  assert set(g["detectors"]) == set(m["controls"]) | {"face_unit"}
  assert all(0 <= v[k] <= 1 for v in g["detectors"].values() for k in ("auc", "shifted_auc"))
  assert m["verdict"] == g["verdict"] and m["verdict"].startswith(("A face unit", "No face unit"))
  report = (tmp_path / "report.html").read_text()
  assert html.escape(m["verdict"]) in report and "Leave-one-source-out" in report
  src = m["by_source"]  # every test face source, scored by the unit and every control
  assert "lfw" in src and sum(r["faces"] for r in src.values()) == m["counts"]["test"]["faces"]
  assert all(set(m["controls"]) | {"face_unit"} <= set(r) for r in src.values())
  for f in ("filters", "stimulus", "histogram", "roc", "invariance", "top_k"):
    assert (tmp_path / "figures" / f"{f}.png").stat().st_size > 1000
  from tensorboard.backend.event_processing import event_accumulator  # the evaluation in TensorBoard
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0})
  acc.Reload()
  assert set(acc.Tags()["images"]) == {"filters/layer1", "filters/layer2", "filters/layer3",
                                       "unit/optimal_stimulus"}
  assert {f"weights/layer{i}/{p}" for i in (1, 2, 3) for p in ("encoder", "decoder")} | {
      "unit/responses/faces", "unit/responses/nonfaces"} == set(acc.Tags()["histograms"])
  faces_h = acc.Histograms("unit/responses/faces")[0]
  assert faces_h.step == 6 and faces_h.histogram_value.num == m["counts"]["test"]["faces"]
  assert [s.step for s in acc.Scalars("total")] == [r["step"] for r in rows]
  # A notebook's view of the run: the checkpointed parameters give the unit's reported responses.
  run = runs.load_run(str(tmp_path))
  assert run.unit == u
  cat = run.unit["sign"] * run.respond(faces.cat_probe(20, 1))
  # the same parameters (checksummed) through the evaluation's program and the notebook's
  assert_reordered_close(cat, [m["cat"]["response"]], n=20 * 20 * 4, depth=u["layer"])
  # Run again: the finished run resumes from its last checkpoint and trains nothing more.
  youtube_faces.main(["--preset", "tiny", "--workdir", str(tmp_path), "--config.eval.enabled=False",
                      "--config.host.keep_heap=False"])
  text = capsys.readouterr().out
  assert "resumed from step 6" in text
  assert hostmem.keep_heap.calls == 1 and "host: malloc as the C library sets it" in text
  # Resuming on other data stops before anything runs, naming the setting, and keeps the run's
  # record of what it trained on.
  began = (tmp_path / "experiment.json").read_text()
  with pytest.raises(SystemExit, match=r"(?s)other data:.*data.frames_per_video: 4 when the run "
                                       r"began, 5 now.*new --workdir"):
    youtube_faces.main(["--preset", "tiny", "--workdir", str(tmp_path),
                        "--config.data.frames_per_video=5"])
  assert (tmp_path / "experiment.json").read_text() == began
  # Scored again without training, into another directory: the checkpoint holds the trained
  # parameters exactly and every other input is seeded, so the same program on this machine gives
  # the same evaluation bit for bit; the run's own files stay as they were.
  mine = (tmp_path / "metrics.json").read_bytes()
  again = youtube_faces.main(["--workdir", str(tmp_path), "--score-into", str(tmp_path / "again")])
  text = capsys.readouterr().out
  assert again["step"] == 6 and "trained:" not in text and "scoring" in text
  m2 = json.loads((tmp_path / "again" / "metrics.json").read_text())
  assert m2["generalisation"] == m["generalisation"] and m2["face_unit"] == m["face_unit"]
  assert (tmp_path / "metrics.json").read_bytes() == mine
  assert (tmp_path / "again" / "report.html").exists()
  assert json.loads((tmp_path / "again" / "experiment.json").read_text())["eval"]["enabled"]
  labelled = _folders(tmp_path / "lab")  # ... and on a user's labelled folders
  users = youtube_faces.main(["--workdir", str(tmp_path), "--score-into", str(tmp_path / "users"),
                              "--eval-faces", str(labelled / "faces"), "--eval-nonfaces",
                              str(labelled / "nonfaces"), "--config.eval.stimulus_steps=2",
                              "--config.eval.choose_shifted=True"])
  assert [f["fold"] for f in users["generalisation"]["folds"]] == ["ann", "bob"]
  assert users["generalisation"]["choose_shifted"] and not m["generalisation"]["choose_shifted"]
  for argv, msg in [(["--score-into", str(tmp_path)], "is the run itself"),
                    (["--score-into", str(tmp_path / "x"), "--config.train.steps=9"],
                     r"only --config.eval.\* .*--config.train.steps=9"),
                    (["--score-into", str(tmp_path / "x"), "--eval-faces", str(labelled)],
                     "go together"),
                    (["--score-into", str(tmp_path / "x"), "--config.eval.unit_layers=(4,)"],
                     r"eval.unit_layers=\(4,\).*the model has 3 layers")]:
    with pytest.raises(SystemExit, match=msg):
      youtube_faces.main(["--workdir", str(tmp_path), *argv])
  with pytest.raises(SystemExit, match="holds no run"):
    youtube_faces.main(["--workdir", str(tmp_path / "none"), "--score-into", str(tmp_path / "x")])
  assert not (tmp_path / "x").exists() and (tmp_path / "metrics.json").read_bytes() == mine


def _folders(root):
  """Labelled folders as a user brings them: faces/{ann,bob}/*.png, nonfaces/{a,b,c}/*.png."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(0)
  for kind, names in (("faces", ("ann", "bob")), ("nonfaces", ("a", "b", "c"))):
    for name in names:
      (root / "labelled" / kind / name).mkdir(parents=True)
      for i in range(4):
        Image.fromarray(rng.integers(0, 256, (24, 24), np.uint8)).save(
            root / "labelled" / kind / name / f"{i}.png")
  return root / "labelled"


def test_labelled_folders_are_checked_before_anything_runs(tmp_path):
  with pytest.raises(SystemExit, match="go together"):
    youtube_faces.main(["--preset", "tiny", "--eval-faces", str(tmp_path)])
  with pytest.raises(SystemExit, match="nowhere: no such directory"):
    youtube_faces.main(["--preset", "tiny", "--eval-faces", str(tmp_path / "nowhere"),
                        "--eval-nonfaces", str(tmp_path)])
  assert not (tmp_path / "runs").exists()


def test_two_processes_on_a_spatial_mesh_train_and_evaluate_like_one(tmp_path):
  """`python -m lcnet.launch --processes 2 -- python -m experiments.youtube_faces` on a 2x4 mesh
  of 2 x 4 CPU devices: one writer of the run's files, the same training losses as the unsharded
  single-process run, and process 0's evaluation (on a user's labelled folders, `--eval-faces`)
  while process 1 waits."""
  import subprocess
  import sys
  one, two = tmp_path / "one", tmp_path / "two"
  # SGD: the losses after a step are smooth in the gradients, so the two runs' different reduction
  # orders stay rounding differences (Adam can flip a near-zero coordinate's whole update)
  sgd = ["--config.train.optimizer=sgd", "--config.train.learning_rate=1e-4"]
  youtube_faces.main(["--preset", "tiny", "--workdir", str(one), "--config.eval.enabled=False", *sgd])
  labelled = _folders(tmp_path)
  cmd = [sys.executable, "-m", "lcnet.launch", "--processes", "2", "--local-devices", "4", "--",
         sys.executable, "-m", "experiments.youtube_faces", "--preset", "tiny", "--workdir",
         str(two), "--config.mesh.rows=2", "--config.mesh.cols=4", "--eval-faces",
         str(labelled / "faces"), "--eval-nonfaces", str(labelled / "nonfaces"),
         "--config.eval.linear_filters=20", "--config.eval.stimulus_steps=2", *sgd]
  p = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
  assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
  assert_trained_alike(one, two)
  m = json.loads((two / "metrics.json").read_text())  # scored on the user's folders
  assert [f["fold"] for f in m["generalisation"]["folds"]] == ["ann", "bob"]
  assert m["face_unit"]["layer"] in (1, 2, 3) and m["counts"]["test"]["faces"] == 4
  assert "report:" in p.stdout and p.stdout.count("trained: 6 steps") == 1  # process 0 speaks
  # only process 0 writes TensorBoard events: training's file, as in the one-process run (whose
  # evaluation is off), and the evaluation's; a writer on process 1 would add a third
  events = lambda d: list(d.rglob("events.out.tfevents.*"))
  assert len(events(one)) == 1 and len(events(two)) == 2, (events(one), events(two))


def assert_trained_alike(one, two):
  """Two `tiny` runs (directories) logged the same steps with losses equal up to the rounding of
  their different reduction orders."""
  rows = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
  a, b = rows(one), rows(two)
  assert [r["step"] for r in a] == [r["step"] for r in b]
  cfg = youtube_faces.lcnet_config(youtube_faces.get_config("tiny"))
  n = cfg.train.batch_size * cfg.model.image_size[0] * cfg.model.image_size[1]
  for x, y in zip(a, b):  # the loss after t steps: t + 1 chains of one sum per layer
    assert_reordered_close(y["total"], x["total"], n, (x["step"] + 1) * len(cfg.model.layers))


@pytest.mark.parametrize("preset", youtube_faces.PRESETS)
def test_every_preset_builds_a_valid_config_and_prints(preset, capsys):
  cfg = youtube_faces.lcnet_config(youtube_faces.get_config(preset))
  assert cfg.train.steps > 0 and cfg.model.image_size[0] == \
      youtube_faces.get_config(preset).model.image_size
  youtube_faces.main(["--preset", preset, "--print-config"])
  assert f"preset: {preset}" in capsys.readouterr().out


@pytest.mark.parametrize("overrides,steps,stages", [
    ([], 45000, (40000, 2500, 2500)),
    (["train.steps=900"], 900, (800, 50, 50)),
    (["model.depth=1", "eval.unit_layers=()"], 40000, (40000,)),  # the default's unit: layers 2-3
    (["model.depth=2", "eval.unit_layers=2,", "train.steps=1000"], 1000, (942, 58)),
    (["train.mode=joint"], 45000, ()),
    (["train.steps=10", "train.stage_steps=(4, 3, 3)"], 10, (4, 3, 3)),
])
def test_a_presets_greedy_schedule_follows_other_overrides(overrides, steps, stages):
  c = youtube_faces.get_config()  # a preset whose schedule is greedy (the default's was)
  c.train.mode, c.train.steps, c.train.stage_steps = "greedy", 45000, (40000, 2500, 2500)
  youtube_faces.apply_overrides(c, overrides)
  cfg = youtube_faces.lcnet_config(c)  # valid: stage_steps sum to steps, one per layer
  assert (cfg.train.steps, cfg.train.stage_steps) == (steps, stages)


def test_the_default_is_the_best_measured_setting():
  """Whole 48x48 frames (stored at a 48-pixel short side) for 2.5k steps at lr 1e-2 (BENCHMARKS.md,
  "Shorter than 1k steps, and whole frames at 48 px for 2.5k steps"), trained greedily ("Greedy
  training that spends its freed time on width") with 16 maps in every layer and the face unit
  chosen in layers 2-3 ("16 maps with the unit chosen above layer 1, on fresh seeds"); layer 3
  trained half as long as layers 1-2, which left the face unit as it was ("Layer 3 trained half
  as long")."""
  c = youtube_faces.get_config()
  cfg = youtube_faces.lcnet_config(c)
  assert (cfg.train.mode, cfg.train.steps, cfg.train.learning_rate) == ("greedy", 2083, 0.01)
  assert cfg.train.stage_steps == (833, 833, 417)
  assert [layer.maps for layer in cfg.model.layers] == [16, 16, 16]
  assert tuple(c.eval.unit_layers) == (2, 3)
  assert cfg.model.image_size == (48, 48) and c.model.image_size == 48
  assert c.data.short_side == 48 and tuple(c.data.crop_scale) == (1, 1)
  assert len(cfg.model.layers) == 3


def test_every_face_lever_setting_is_a_valid_config():
  """benchmarks/face_levers.py's settings are `--config` overrides: each must still parse."""
  from benchmarks import face_levers
  for name, overrides in face_levers.SETTINGS.items():
    c, cfg = face_levers._config(overrides)
    assert cfg.train.steps > 0 and cfg.model.image_size[0] in (32, 48), name
    assert cfg.model.layers[0].maps in (8, 16) and c.data.short_side == 0, name  # BASE's, not today's


def test_a_users_folder_with_bad_files_lists_them_in_metrics_and_report(tmp_path, caplog):
  """--data on a folder with stills, a truncated mp4 and a text file named .jpg: both bad files are
  skipped, and each is named in the log, metrics.json and report.html."""
  import numpy as np
  from PIL import Image
  media = tmp_path / "media"
  media.mkdir()
  rng = np.random.default_rng(1)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (70, 80), np.uint8)).save(media / f"s{i}.png")
  (media / "cut.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
  (media / "notes.jpg").write_text("not a jpeg")
  labelled = _folders(tmp_path)
  with pytest.raises(SystemExit, match=r"eval.unit_layers=\(4,\)"):  # checked before the data
    youtube_faces.main(["--preset", "tiny", "--workdir", str(tmp_path / "bad"), "--data", str(media),
                        "--config.eval.unit_layers=4,"])
  with pytest.raises(SystemExit, match=r"eval.choose_shifted=True.*eval.shifted_views=0"):
    youtube_faces.main(["--preset", "tiny", "--workdir", str(tmp_path / "bad"), "--data", str(media),
                        "--config.eval.choose_shifted=True", "--config.eval.shifted_views=0"])
  assert not (tmp_path / "bad").exists()  # nothing written for a run that could not start
  run = tmp_path / "run"
  with caplog.at_level("WARNING", "lcnet.data"):
    youtube_faces.main(["--preset", "tiny", "--workdir", str(run), "--data", str(media),
                        "--config.data.cache_dir", str(tmp_path / "cache"),
                        "--config.data.crop_scale=1,1.5",  # scaled crops through the whole run
                        "--eval-faces", str(labelled / "faces"), "--eval-nonfaces",
                        str(labelled / "nonfaces"), "--config.eval.linear_filters=20",
                        "--config.eval.stimulus_steps=2"])
  said = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert len(said) == 1 and "cut.mp4" in said[0] and "notes.jpg" in said[0]
  d = json.loads((run / "metrics.json").read_text())["data"]
  assert d["files"] == 5 and d["frames"] == 3
  assert sorted(s["path"].rsplit("/", 1)[1] for s in d["skipped_files"]) == ["cut.mp4", "notes.jpg"]
  report = (run / "report.html").read_text()
  assert "2 unreadable file(s) skipped" in report and "cut.mp4" in report and "notes.jpg" in report


def _wandb_records(path):
  """The records of a .wandb file: W&B's LevelDB-style log (a 7-byte header, then 32 KiB blocks of
  chunks: crc32 (4), length (2), type (1: full, 2: first, 3: middle, 4: last), data)."""
  import struct

  from wandb.proto import wandb_internal_pb2 as pb
  raw = open(path, "rb").read()
  assert raw[:4] == b":W&B"
  out, pos, buf = [], 7, b""
  while pos + 7 <= len(raw):
    left = 32768 - pos % 32768
    if left < 7:  # a block's tail too short for a chunk header is padding
      pos += left
      continue
    _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
    if pos + 7 + n > len(raw):  # a chunk still being written
      break
    buf += raw[pos + 7:pos + 7 + n]
    pos += 7 + n
    if kind in (1, 4):
      r = pb.Record()
      r.ParseFromString(buf)
      out.append(r)
      buf = b""
    elif kind == 0:
      break
  return out


def test_weights_and_biases_offline_gets_the_training_and_the_evaluation(tmp_path, monkeypatch):
  pytest.importorskip("wandb", reason="W&B is optional: pip install wandb (the test extra has it)")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  labelled = _folders(tmp_path)
  run = tmp_path / "run"
  youtube_faces.main(["--preset", "tiny", "--workdir", str(run), "--config.log.wandb=True",
                      "--eval-faces", str(labelled / "faces"), "--eval-nonfaces",
                      str(labelled / "nonfaces"), "--config.eval.linear_filters=20",
                      "--config.eval.stimulus_steps=2"])
  files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
  assert len(files) == 1 and files[0].name == f"run-{(run / 'wandb_id').read_text()}.wandb"
  import time
  end = time.time() + 60  # W&B's core process may still be writing the file's last records
  recs = _wandb_records(files[0])
  while "exit" not in [r.WhichOneof("record_type") for r in recs]:
    assert time.time() < end, "the W&B run file has no exit record"
    time.sleep(0.2)
    recs = _wandb_records(files[0])
  key = lambda i: i.key or "|".join(i.nested_key)  # a media item's fields: "name|field"
  history = [{key(i): json.loads(i.value_json) for i in r.history.item} for r in recs
             if r.WhichOneof("record_type") == "history"]
  logged = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
  steps = [h["_step"] for h in history if "total" in h]
  assert steps == [r["step"] for r in logged]
  assert [h["total"] for h in history if "total" in h] == pytest.approx([r["total"] for r in logged])
  media = {k: v for h in history for k, v in h.items() if "|" in k}
  assert media["filters/layer1|_type"] == media["unit/optimal_stimulus|_type"] == "image-file"
  assert len(list((run / "wandb").glob(f"offline-run-*/files/{media['filters/layer1|path']}"))) == 1
  assert media["unit/responses/faces|_type"] == "histogram"
  summary = {key(i): json.loads(i.value_json) for r in recs
             if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
  m = json.loads((run / "metrics.json").read_text())
  assert sum(media["unit/responses/faces|values"]) == m["counts"]["test"]["faces"]
  assert summary["verdict"] == m["verdict"]
  assert summary["loso/face_unit"] == pytest.approx(m["generalisation"]["detectors"]["face_unit"]["auc"])
  config = {key(i): json.loads(i.value_json) for r in recs
            if r.WhichOneof("record_type") == "run" for i in r.run.config.update}
  assert config["preset"] == "tiny" and config["log"]["wandb"] is True
