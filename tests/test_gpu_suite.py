"""The prepared GPU script runs end to end on the CPU at toy sizes, so that a rare GPU loan is not
spent on a broken script: every section completes without an error and writes its figures."""
import json

from lcnet import model


def test_every_section_runs_at_toy_sizes(tmp_path, monkeypatch):
  from benchmarks import gpu_suite
  tiny = model.PRESETS["tiny"]

  def small(name, optimizer):
    return lambda: tiny().replace(name=name, model=dict(image_size=(24, 24), channels=3),
                                  train=dict(optimizer=optimizer))
  monkeypatch.setitem(model.PRESETS, "le2012", small("le2012", "sgd"))
  monkeypatch.setitem(model.PRESETS, "coates2013_11b", small("coates2013_11b", "sgd"))
  monkeypatch.setattr(gpu_suite, "LE2012_LAYERS", {"layer1": (4, 12, 12, 3, 4, 1, 8)})
  res = gpu_suite.main(["--out", str(tmp_path), "--batches", "4", "--per-pass", "--warps", "1",
                        "--dtypes", "float32", "bfloat16", "--step-dtypes", "bfloat16",
                        "--layers", "layer1", "--budget-s", "600"])
  saved = json.loads((tmp_path / "gpu_suite.json").read_text())
  assert saved["total_s"] == res["total_s"]
  for section in ("correct", "local_layer", "train_step", "state_11b", "fit"):
    assert "error" not in res[section] and "skipped" not in res[section], section
  assert res["correct"]["ok"]
  rows = res["local_layer"]["rows"]
  assert {(r["impl"], r["pass"], r["dtype"]) for r in rows} >= {
      (i, p, d) for i in ("xla", "pallas") for d in ("float32", "bfloat16")
      for p in ("fwd+bwd", "fwd", "input_grad", "weight_grad")}
  assert all("median_ms" in r for r in rows)
  assert [r["compute_dtype"] for r in res["train_step"]["rows"] if "images_per_s" in r] == ["bfloat16"]
  assert res["state_11b"]["restored_equal"]
  assert 0 <= res["fit"]["input_wait_median"] <= 1 and res["fit"]["input_wait_total_s"] >= 0
