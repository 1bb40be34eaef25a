"""Which settings make a face unit emerge? The youtube_faces pipeline over a list of settings.

    python -m benchmarks.face_levers prepare --out .levers       # here: decode frames, build sets
    python -m benchmarks.face_levers run --prepared .levers --out levers.jsonl [--only a b]
    python -m benchmarks.face_levers rescore --run runs/youtube_faces --out F --setting NAME

`prepare` decodes the embedded corpus and builds the labelled face / hardened non-face sets for
each input size the settings use, into one npz per size, so `run` needs neither ffmpeg nor the
package videos (e.g. on a GPU machine that has only jax). `run` trains each setting from scratch
with `train.fit` on the same crops the experiment uses (its frames' short side; the table's rows
before 2026-12-01 were measured at the then default, 3x the crop), evaluates it with `lcnet.evaluate`
(leave-one-source-out, as-is and shifted/scaled, and the selection/test split; every control
through the same procedure), and appends one JSON line per setting. One run per setting is one
draw (seeds move a run by ~0.1 AUC): `benchmarks/face_seeds.py` judges a setting over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Every setting starts from BASE (the experiment's default until greedy schedules: 5k joint steps
# at lr 1e-2 on 32x32 crops of frames stored at 3x the crop, 8 maps, the unit in any layer), so
# each row means what it meant when it was measured, whatever the default is now.
BASE = ["model.image_size=32", "model.maps=8", "data.short_side=0", "eval.unit_layers=()",
        "train.mode=joint", "train.stage_steps=()", "train.steps=5000", "train.learning_rate=0.01"]
# name -> --config overrides of experiments.youtube_faces on top of BASE
SETTINGS = {
    "600 steps, lr 3e-3": ["train.steps=600", "train.learning_rate=0.003"],
    "5k steps, lr 3e-3": ["train.steps=5000", "train.learning_rate=0.003"],
    "5k steps, lr 1e-2 (the default before greedy schedules)": [],
    "5k steps, lr 3e-3, init 0.1": ["train.steps=5000", "train.learning_rate=0.003",
                                    "model.init_scale=0.1"],
    "5k steps, lr 3e-3, 16 maps": ["train.steps=5000", "train.learning_rate=0.003",
                                   "model.maps=16"],
    "6k steps greedy, lr 3e-3": ["train.steps=6000", "train.learning_rate=0.003",
                                 "train.mode=greedy"],
    "5k steps, lr 3e-3, 48x48 input": ["train.steps=5000", "train.learning_rate=0.003",
                                       "model.image_size=48"],
    "20k steps, lr 3e-3": ["train.steps=20000", "train.learning_rate=0.003"],
    "20k steps, lr 1e-2": ["train.steps=20000"],
    "5k steps, lr 1e-2, whitened input": ["model.whiten_input=True"],
    "5k steps, lr 3e-3, whitened input": ["train.learning_rate=0.003", "model.whiten_input=True"],
    "5k steps, lr 1e-2, encoder filters free (no unit norm)": ["model.unit_norm_encoder=False"],
    "5k steps, lr 1e-2, 1 layer": ["model.depth=1"],
    "5k steps, lr 1e-2, 16 maps": ["model.maps=16"],
    "25k steps greedy (20k, 2.5k, 2.5k), lr 1e-2": [
        "train.mode=greedy", "train.steps=25000", "train.stage_steps=(20000, 2500, 2500)"],
    "40k steps, lr 1e-2, 1 layer": ["train.steps=40000", "model.depth=1"],
    "45k steps greedy (40k, 2.5k, 2.5k), lr 1e-2 (the default)": [
        "train.mode=greedy", "train.steps=45000", "train.stage_steps=(40000, 2500, 2500)"],
    "48x48 input, greedy 20k/2.5k/2.5k, lr 1e-2": [
        "model.image_size=48", "train.mode=greedy", "train.steps=25000",
        "train.stage_steps=(20000, 2500, 2500)"],
}


def _config(overrides):
  from experiments import youtube_faces
  c = youtube_faces.get_config("cpu_default")
  youtube_faces.apply_overrides(c, BASE + list(overrides))
  return c, youtube_faces.lcnet_config(c)


def prepare(out: str):
  import numpy as np

  from lcnet import data, faces
  os.makedirs(out, exist_ok=True)
  sizes = sorted({_config(o)[1].model.image_size[0] for o in SETTINGS.values()})
  for size in sizes:
    c, cfg = _config([f"model.image_size={size}"])
    src = data.source(cfg, None, frames_per_video=c.data.frames_per_video,
                      short_side=c.data.short_side or None)  # as the experiment stores them
    ls = faces.labelled_set(size, 1, nonfaces_per_face=c.eval.nonfaces_per_face,
                            still_views=c.eval.still_views, seed=c.eval.seed)
    frames = np.empty(len(src.images), object)
    frames[:] = [np.asarray(f) for f in src.images]
    np.savez(os.path.join(out, f"size{size}.npz"), frames=frames, images=ls.images,
             labels=ls.labels, split=ls.split, source=ls.source, context=ls.context,
             cat=faces.cat_probe(size, 1))
    print(f"size {size}: {len(frames)} frames, {len(ls.labels)} labelled images", flush=True)


def run(prepared: str, out: str, only=None):
  import jax
  import numpy as np

  from lcnet import data, evaluate, faces, runs, train
  for name, overrides in SETTINGS.items():
    if only and not any(o in name for o in only):
      continue
    c, cfg = _config(overrides)
    size = cfg.model.image_size[0]
    z = np.load(os.path.join(prepared, f"size{size}.npz"), allow_pickle=True)
    src = data.CropSource(list(z["frames"]), size, cfg.train.batch_size, cfg.train.seed,
                          whiten=cfg.model.whiten_input)
    ls = faces.LabelledSet(z["images"], z["labels"], z["split"], z["source"], z["context"])
    faces.cat_probe = lambda size, channels=1, _cat=z["cat"]: _cat  # no image files needed
    t0 = time.time()
    res = train.fit(cfg, src)
    jax.block_until_ready(res.state)
    train_s = time.time() - t0
    net = runs.model_from_params(cfg, res.state.params)
    crops = evaluate.training_crops(src, c.eval.linear_filters)
    rep = evaluate.metrics(evaluate.evaluate(cfg, net, ls, crops, stimulus_steps=50))
    u = rep["face_unit"]
    row = {"setting": name, "overrides": overrides, "train_s": round(train_s, 1),
           "eval_s": round(time.time() - t0 - train_s, 1), "device": jax.devices()[0].device_kind,
           "final_total": res.history[-1]["total"] if res.history else None,
           "face_unit": {k: u[k] for k in ("layer", "location", "map", "selection_auc",
                                           "test_auc", "test_accuracy")},
           "per_layer_test_auc": [p["test_auc"] for p in u.get("per_layer", [])],
           "controls": {k: round(v["test_auc"], 4) for k, v in rep["controls"].items()},
           "trivial_aucs": rep["trivial_aucs"],
           # the headline since issue 15: leave-one-source-out, as-is and shifted/scaled
           "loso": {k: {m: (round(v[m], 4) if isinstance(v[m], float) else v[m])
                        for m in ("auc", "worst_auc", "worst_auc_fold", "shifted_auc")}
                    for k, v in rep["generalisation"]["detectors"].items()},
           "loso_units": rep["generalisation"]["unit_folds"],
           "loso_per_layer": [[round(r["auc"], 4), round(r["shifted_auc"], 4)]
                              for r in rep["generalisation"]["per_layer"]],
           "verdict": rep["generalisation"]["verdict"]}
    print(json.dumps(row), flush=True)
    with open(out, "a") as f:
      f.write(json.dumps(row) + "\n")


def rescore(run_dir: str, out: str, setting: str, linear_filters: int = 1000):
  """A finished run (e.g. `make run`'s) scored again with today's evaluation and labelled set,
  without training: one row like `run`'s, train_s from its metrics.jsonl."""
  from lcnet import data, evaluate, faces, runs
  r = runs.load_run(run_dir)
  cfg = r.config
  src = data.source(cfg)
  ls = faces.labelled_set(cfg.model.image_size[0], cfg.model.channels)
  t0 = time.time()
  rep = evaluate.metrics(evaluate.evaluate(cfg, r.net, ls, evaluate.training_crops(
      src, linear_filters), stimulus_steps=50))
  g = rep["generalisation"]
  last = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))][-1]
  row = {"setting": setting, "run_dir": run_dir, "train_s": round(last["seconds"], 1),
         "eval_s": round(time.time() - t0, 1),
         "loso": {k: {m: v[m] for m in ("auc", "worst_auc", "worst_auc_fold", "shifted_auc")}
                  for k, v in g["detectors"].items()},
         "loso_units": g["unit_folds"],
         "loso_per_layer": [[p["auc"], p["shifted_auc"]] for p in g["per_layer"]],
         "verdict": g["verdict"], "counts": rep["counts"]}
  print(json.dumps(row), flush=True)
  with open(out, "a") as f:
    f.write(json.dumps(row) + "\n")


def table(path: str) -> str:
  """A markdown table of a results file: leave-one-source-out (mean / shifted) where the row has
  it, else the selection/test split's test AUC (rows measured before issue 15)."""
  rows = [json.loads(l) for l in open(path)]
  if all("loso" in r for r in rows):
    names = list(rows[0]["loso"])
    head = ["setting", *[f"{n}: LOSO / shifted (worst)" for n in names], "trained, per layer",
            "train s"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
      cells = [f"{r['loso'][n]['auc']:.3f} / {r['loso'][n]['shifted_auc']:.3f} "
               f"({r['loso'][n]['worst_auc']:.2f} {r['loso'][n]['worst_auc_fold']})" for n in names]
      layers = ", ".join(f"L{i + 1} {a:.3f}/{b:.3f}" for i, (a, b) in enumerate(r["loso_per_layer"]))
      out.append(f"| {r['setting']} | " + " | ".join(cells) + f" | {layers} | {r['train_s']} |")
    return "\n".join(out)
  ctrl = list(rows[0]["controls"])
  head = ["setting", "unit (layer)", "unit test AUC", *ctrl, "train s"]
  out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    u = r["face_unit"]
    out.append(f"| {r['setting']} | L{u['layer']} | {u['test_auc']:.3f} | "
               + " | ".join(f"{r['controls'][k]:.3f}" for k in ctrl) + f" | {r['train_s']} |")
  return "\n".join(out)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="what", required=True)
  p = sub.add_parser("prepare")
  p.add_argument("--out", required=True)
  r = sub.add_parser("run")
  r.add_argument("--prepared", required=True)
  r.add_argument("--out", required=True)
  r.add_argument("--only", nargs="*", default=None)
  q = sub.add_parser("rescore")
  q.add_argument("--run", required=True)
  q.add_argument("--out", required=True)
  q.add_argument("--setting", required=True)
  t = sub.add_parser("table")
  t.add_argument("path")
  args = ap.parse_args(argv)
  if args.what == "prepare":
    prepare(args.out)
  elif args.what == "run":
    run(args.prepared, args.out, args.only)
  elif args.what == "rescore":
    rescore(args.run, args.out, args.setting)
  else:
    print(table(args.path))


if __name__ == "__main__":
  sys.exit(main())
