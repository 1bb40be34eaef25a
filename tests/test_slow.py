"""Long runs (`make test-slow`; `make test` leaves them out): the default experiment end to end.

The default `python -m experiments.youtube_faces` (what `make run` runs, ~10 min on 2 cores) runs
in a subprocess as `make run` does: one CPU device and full XLA optimisation, not the test
session's 8 simulated devices and `jax_disable_most_optimizations`. What it must keep is what
holds over seeds and machines, not one run's digits (float32 rounding alone moves a run's AUC by
up to 0.1, README "Today's result"):
- the trained face unit scores above the same network with random weights on faces of sources it
  was not chosen on, as the images are and shifted/scaled: the failure issue 15 found (0.653
  against 0.689). Over the default's ten recorded seeds ("gm16u23" in benchmarks/results/
  face_seeds_O_2026-12-07.json and face_seeds_Oc_2026-12-07.json) the smallest lead was +0.039
  as-is (seed 35: 0.721 against 0.682) and +0.102 shifted;
- the verdict says "emerged" exactly when the numbers meet the bar, computed here from them.
"""
import json
import os
import subprocess
import sys

import pytest

from lcnet import holdout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_default_experiment_trains_a_unit_above_its_random_weights_and_says_so(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  subprocess.run([sys.executable, "-m", "experiments.youtube_faces", "--workdir", str(tmp_path)],
                 cwd=ROOT, env=env, check=True, timeout=3000)
  g = json.loads((tmp_path / "metrics.json").read_text())["generalisation"]
  d = g["detectors"]
  unit, rand = d["face_unit"], d["random_weights"]
  for key in ("auc", "shifted_auc"):
    assert unit[key] > rand[key], (key, unit[key], rand[key])
  unsup = [k for k in d if k != "face_unit" and k not in holdout.SUPERVISED]
  assert set(holdout.BAR_CONTROLS) <= set(unsup)
  bar = all(unit[key] >= holdout.TARGET_AUC and
            all(unit[key] >= d[k][key] + holdout.MARGIN for k in unsup)
            for key in ("auc", "shifted_auc"))
  assert g["verdict"].startswith("A face unit emerged" if bar else "No face unit emerged"), g["verdict"]
  assert (tmp_path / "report.html").exists() and len(list((tmp_path / "figures").glob("*.png"))) == 6
