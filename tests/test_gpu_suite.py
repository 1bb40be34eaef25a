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
                        "--cols", "1", "3", "--dtypes", "float32", "bfloat16",
                        "--step-dtypes", "bfloat16", "--layers", "layer1", "--budget-s", "600"])
  saved = json.loads((tmp_path / "gpu_suite.json").read_text())
  assert saved["total_s"] == res["total_s"]
  for section in ("correct", "local_layer", "train_step", "state_11b", "fit"):
    assert "error" not in res[section] and "skipped" not in res[section], section
  assert res["correct"]["ok"] and "le2012_layer1_input_grad_3cols_max_rel_err" in res["correct"]
  rows = res["local_layer"]["rows"]
  assert {(r["impl"], r["pass"], r["dtype"]) for r in rows} >= {
      (i, p, d) for i in ("xla", "pallas") for d in ("float32", "bfloat16")
      for p in ("fwd+bwd", "fwd", "input_grad", "weight_grad")}
  assert all("median_ms" in r for r in rows)
  assert {r["cols"] for r in rows if r["impl"] == "pallas" and r["pass"] == "fwd+bwd"} == {1, 3}
  best = res["local_layer"]["best_cols"]
  assert best in (1, 3)
  steps = res["train_step"]["rows"]
  assert [r["compute_dtype"] for r in steps if "images_per_s" in r] == ["bfloat16"]
  # interpret mode is > 4x slower than XLA here: every Pallas setting is skipped and says why
  assert sorted((r["contract"], r["pallas_cols"], r.get("skipped", "")[:13]) for r in steps) == sorted(
      {("einsum", 1, ""), ("pallas", 1, "Pallas layer "), ("pallas", best, "Pallas layer ")})
  assert res["state_11b"]["restored_equal"]
  assert 0 <= res["fit"]["input_wait_median"] <= 1 and res["fit"]["input_wait_total_s"] >= 0


def test_best_columns_are_the_least_total_time_over_the_layers():
  """The fastest Pallas fwd+bwd summed over the layers, at the default warps, in float32; rows
  of other warps, dtypes or passes, and a setting not timed on every layer, do not count."""
  from benchmarks import gpu_suite

  def row(layer, cols, ms, **kw):
    return {"layer": layer, "impl": "pallas", "pass": "fwd+bwd", "dtype": "float32",
            "num_warps": None, "cols": cols, "median_ms": ms} | kw
  rows = [row("layer1", 1, 10.0), row("layer2", 1, 20.0),
          row("layer1", 2, 9.0), row("layer2", 2, 16.0),  # 25: the least
          row("layer1", 4, 5.0), row("layer2", 4, 22.0),  # 27
          row("layer1", 8, 1.0),  # layer 2 failed: not a candidate
          row("layer1", 1, 0.1, num_warps=99), row("layer2", 1, 0.1, dtype="bfloat16"),
          row("layer2", 4, 0.1, **{"pass": "fwd"}), {"layer": "layer1", "impl": "xla",
          "pass": "fwd+bwd", "dtype": "float32", "num_warps": None, "cols": None, "median_ms": 8.0}]
  assert gpu_suite._best_cols(rows) == 2
  assert gpu_suite._pallas_slowdown(rows) == 10.0 / 8.0
  assert gpu_suite._pallas_slowdown(rows, 2) == 9.0 / 8.0
