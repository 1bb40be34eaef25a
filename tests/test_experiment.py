"""The experiment entry point: config overrides, and the whole pipeline end to end on `tiny`."""
import html
import json

import pytest
from numerics import assert_reordered_close

from experiments import youtube_faces
from lcnet import face_archives, faces, runs


def test_config_overrides_are_typed_and_checked():
  c = youtube_faces.get_config("tiny")
  youtube_faces.apply_overrides(c, ["model.maps=6", "train.learning_rate=1", "eval.enabled=False",
                                    "data.dir=/some/where"])
  assert c.model.maps == 6 and c.train.learning_rate == 1.0 and c.eval.enabled is False
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
  youtube_faces.apply_overrides(c, ["model.depth=2"])
  assert len(youtube_faces.lcnet_config(c).model.layers) == 2
  with pytest.raises(SystemExit, match="model.depth=4.*give 1..3"):
    youtube_faces.main(["--print-config", "--config.model.depth=4"])


def test_youtube_faces_tiny_end_to_end(tmp_path, capsys):
  out = youtube_faces.main(["--preset", "tiny", "--workdir", str(tmp_path)])
  text = capsys.readouterr().out
  assert "trained: 6 steps" in text and "leave-one-source-out AUC" in text and "report:" in text
  assert "split view: face unit layer" in text
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
  # A notebook's view of the run: the checkpointed parameters give the unit's reported responses.
  run = runs.load_run(str(tmp_path))
  assert run.unit == u
  cat = run.unit["sign"] * run.respond(faces.cat_probe(20, 1))
  # the same parameters (checksummed) through the evaluation's program and the notebook's
  assert_reordered_close(cat, [m["cat"]["response"]], n=20 * 20 * 4, depth=u["layer"])
  # Run again: the finished run resumes from its last checkpoint and trains nothing more.
  youtube_faces.main(["--preset", "tiny", "--workdir", str(tmp_path), "--config.eval.enabled=False"])
  assert "resumed from step 6" in capsys.readouterr().out


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
  rows = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
  a, b = rows(one), rows(two)
  assert [r["step"] for r in a] == [r["step"] for r in b]
  cfg = youtube_faces.lcnet_config(youtube_faces.get_config("tiny"))
  n = cfg.train.batch_size * cfg.model.image_size[0] * cfg.model.image_size[1]
  for x, y in zip(a, b):  # the loss after t steps: t + 1 chains of one sum per layer
    assert_reordered_close(y["total"], x["total"], n, (x["step"] + 1) * len(cfg.model.layers))
  m = json.loads((two / "metrics.json").read_text())  # scored on the user's folders
  assert [f["fold"] for f in m["generalisation"]["folds"]] == ["ann", "bob"]
  assert m["face_unit"]["layer"] in (1, 2, 3) and m["counts"]["test"]["faces"] == 4
  assert "report:" in p.stdout and p.stdout.count("trained: 6 steps") == 1  # process 0 speaks


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
    (["model.depth=1"], 40000, (40000,)),
    (["model.depth=2", "train.steps=1000"], 1000, (942, 58)),
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
  """5k joint steps at lr 1e-2 (BENCHMARKS.md, face-unit levers under leave-one-source-out)."""
  cfg = youtube_faces.lcnet_config(youtube_faces.get_config())
  assert (cfg.train.mode, cfg.train.steps, cfg.train.learning_rate) == ("joint", 5000, 0.01)
  assert cfg.train.stage_steps == () and len(cfg.model.layers) == 3


def test_every_face_lever_setting_is_a_valid_config():
  """benchmarks/face_levers.py's settings are `--config` overrides: each must still parse."""
  from benchmarks import face_levers
  for name, overrides in face_levers.SETTINGS.items():
    _, cfg = face_levers._config(overrides)
    assert cfg.train.steps > 0 and cfg.model.image_size[0] in (32, 48), name
