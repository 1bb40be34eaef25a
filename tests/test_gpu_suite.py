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
  fwd_bwd = [r for r in rows if r["impl"] == "pallas" and r["pass"] == "fwd+bwd"]
  assert {r["cols"] for r in fwd_bwd} == {1, 3}
  assert {r["batch_tile"] for r in fwd_bwd} == {32}  # batch 4: no other batch blocks to try
  best = res["local_layer"]["best_tiles"]
  assert best["cols"] in (1, 3) and best["num_warps"] in (1, 2) and best["batch_tile"] == 32
  steps = res["train_step"]["rows"]
  assert [r["compute_dtype"] for r in steps if "images_per_s" in r] == ["bfloat16"]
  # interpret mode is > 4x slower than XLA here: every Pallas setting is skipped and says why
  got = sorted((r["contract"], r["cols"], r["num_warps"], r.get("skipped", "")[:13]) for r in steps)
  want = {("einsum", 1, 2, ""), ("pallas", 1, 2, "Pallas layer "),
          ("pallas", best["cols"], best["num_warps"], "Pallas layer ")}
  assert got == sorted(want)
  assert res["state_11b"]["restored_equal"]
  assert 0 <= res["fit"]["input_wait_median"] <= 1 and res["fit"]["input_wait_total_s"] >= 0


def test_best_tiles_are_chosen_per_dimension_against_the_default():
  """Each tile dimension's value with the least mean time relative to the default tiles on the
  same layers (other dimensions at their defaults); rows of other dtypes or passes, XLA rows and
  errors do not count; the slowdown is the fastest Pallas layer-1 row over XLA's."""
  from benchmarks import gpu_suite
  from lcnet import ops
  d = ops.DEFAULT_TUNING["gpu"].pallas

  def row(layer, ms, cols=d.cols, warps=d.warps, batch=d.batch, **kw):
    return {"layer": layer, "impl": "pallas", "pass": "fwd+bwd", "dtype": "float32", "cols": cols,
            "num_warps": warps, "batch_tile": batch, "median_ms": ms} | kw
  rows = [row("layer1", 10.0), row("layer2", 20.0), row("layer1_b64", 40.0),
          row("layer1", 9.0, cols=2), row("layer2", 16.0, cols=2),  # mean ratio 0.85: best cols
          row("layer1", 5.0, cols=4), row("layer2", 40.0, cols=4),  # mean ratio 1.25
          row("layer1", 6.0, warps=d.warps * 2),  # the best warps (layer 1 only)
          row("layer1_b64", 30.0, batch=64), row("layer1_b64", 50.0, batch=16),
          row("layer1", 0.1, cols=8, dtype="bfloat16"), row("layer2", 0.1, cols=8, **{"pass": "fwd"}),
          row("layer1", 0.1, cols=16, warps=d.warps * 2),  # two dimensions changed: not counted
          {"layer": "layer1", "impl": "pallas", "pass": "fwd+bwd", "dtype": "float32", "cols": 32,
           "num_warps": d.warps, "batch_tile": d.batch, "error": "OOM"},
          {"layer": "layer1", "impl": "xla", "pass": "fwd+bwd", "dtype": "float32",
           "median_ms": 8.0}]
  assert gpu_suite._best_tiles(rows) == ops.PallasTiles(cols=2, warps=d.warps * 2, batch=64)
  assert gpu_suite._pallas_slowdown(rows) == 0.1 / 8.0
  assert gpu_suite._best_tiles(rows[:3]) == d
