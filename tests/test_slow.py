"""Long runs (`make test-slow`; `make test` leaves them out): the default experiment end to end.

The default `python -m experiments.youtube_faces` (what `make run` runs, ~10 min on 2 cores) must
keep its measured result: a trained face unit at test AUC >= 0.85 that beats every unsupervised
control (random weights, best of 1000 linear filters, best pixel, gradient energy) by >= 0.05.
"""
import json

import pytest

from experiments import youtube_faces

UNSUPERVISED = ("random_weights", "linear_filters", "single_pixel", "gradient_energy")


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_default_experiment_finds_a_unit_above_the_unsupervised_controls(tmp_path):
  out = youtube_faces.main(["--workdir", str(tmp_path)])
  m = json.loads((tmp_path / "metrics.json").read_text())
  assert m["face_unit"] == out["face_unit"]
  auc = m["face_unit"]["test_auc"]
  best = max(m["controls"][k]["test_auc"] for k in UNSUPERVISED)
  assert auc >= 0.85 and auc >= best + 0.05, (auc, {k: v["test_auc"] for k, v in m["controls"].items()})
  assert (tmp_path / "report.html").exists() and len(list((tmp_path / "figures").glob("*.png"))) == 6
