"""Le et al. (2012) on video frames: train the deep sparse autoencoder, find the face unit, report.

Run (what `make run` does; about 10 min on 2 CPU cores with AVX-512, the first run also decoding the frames):
    python -m experiments.youtube_faces [--preset cpu_default] [--workdir runs/youtube_faces]
        [--data DIR_OF_VIDEOS_AND_IMAGES] [--config.train.learning_rate=0.003] [--config.model.maps=16] ...

Presets are lcnet's model presets (`lcnet.model.PRESETS`): `cpu_default` (the default; the
embedded corpus), `tiny` (seconds; tests), `le2012` (the paper's 200x200x3 model; a GPU) and
`coates2013_11b` (11.2e9 parameters; a GPU cluster). Every field of `get_config()` can be
overridden with `--config.<path>=<value>` or `--config.<path> <value>`; `--print-config` shows
them and exits.

A run directory holds config.json, metrics.jsonl (training, as it goes), checkpoints/ (resumed
when the command is run again; SIGTERM/SIGINT commits one and exits), and after evaluation
metrics.json (face_unit, controls, ...), figures/*.png and report.html. From a notebook:
`lcnet.runs.load_run(run_dir)`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

import ml_collections

# The presets are lcnet's model presets (`lcnet.model.PRESETS`, the one table of models); this
# table holds only what the experiment sets beyond a preset's own train config.
DEFAULT_PRESET = "cpu_default"
EXPERIMENT = {
    # the best setting measured under leave-one-source-out (BENCHMARKS.md): whole 48x48 frames
    # (stored at a 48-pixel short side, "The frames' scale") for 2.5k steps at lr 1e-2, which
    # qualified over ten seeds against 1k steps on 64-px crops ("Shorter than 1k steps, and whole
    # frames at 48 px for 2.5k steps": +0.054 / +0.030); trained greedily, layer by layer, with 12
    # maps per location, which costs what 8 maps trained jointly did and qualified against that on
    # seeds 0-4 and again on fresh seeds 30-34 ("Greedy training that spends its freed time on
    # width": +0.040 / +0.025, then +0.038 / +0.015); with 16 maps per location and the face unit
    # (and its random-weights control) chosen in layers 2-3, which qualified against 12 maps with
    # the unit in any layer on fresh seeds 35-39 and again on 40-44 ("16 maps with the unit chosen
    # above layer 1, on fresh seeds"; layer-1 units won the choice and generalised worse). On crops
    # the longer the training, the less face-selective the units ("Sparsity weight, training
    # length and whole frames"). Layer 3 trains 417 steps, half of layers 1-2's 833: every fold
    # of seeds 35-49 chose a layer-2 unit, layers 1-2 do not depend on layer 3, and the face unit
    # stayed the same to the digit on seeds 45-49 at a tenth less time ("Layer 3 trained half as
    # long")
    "cpu_default": dict(model=dict(image_size=48, maps=(16,)),
                        train=dict(mode="greedy", steps=2083, stage_steps=(833, 833, 417),
                                   learning_rate=0.01, save_every=500),
                        data=dict(short_side=48), eval=dict(unit_layers=(2, 3))),
    "tiny": dict(train=dict(steps=6, save_every=3), data=dict(frames_per_video=4),
                 eval=dict(linear_filters=50, stimulus_steps=10, still_views=2)),
    "le2012": dict(data=dict(frames_per_video=200)),  # the paper's model (a GPU, or a mesh)
    "coates2013_11b": dict(data=dict(frames_per_video=200)),  # 11.2e9 parameters: a GPU cluster
}
PRESETS = tuple(EXPERIMENT)
CONTROL_CROPS = ("training", "preset")
# `LayerConfig` fields the experiment's config sets per layer, and their types
LAYER_FIELDS = {"rf": int, "maps": int, "stride": int, "pool_size": int, "pool_stride": int,
                "lcn_size": int, "lam": float}


def get_config(preset: str = DEFAULT_PRESET) -> ml_collections.ConfigDict:
  """The experiment's settings as data, for one of lcnet's model presets. The per-layer `model.*`
  fields (LAYER_FIELDS) take one value for every layer (`--config.model.maps=16`) or one per
  layer (`--config.model.stride=2,1,1`); () keeps the preset's. `model.depth` keeps the preset's
  first `depth` layers."""
  from lcnet import model
  if preset not in EXPERIMENT or preset not in model.PRESETS:
    raise ValueError(f"unknown preset {preset!r}; choose one of {PRESETS}")
  m = model.preset(preset)
  c = ml_collections.ConfigDict()
  c.preset = preset
  c.model = ml_collections.ConfigDict(dict(
      image_size=m.model.image_size[0], channels=m.model.channels,
      unit_norm_encoder=m.model.unit_norm_encoder, init_scale=m.model.init_scale,
      whiten_input=m.model.whiten_input,
      local_op=ml_collections.ConfigDict(dataclasses.asdict(m.model.local_op)),
      param_dtype=m.model.param_dtype, compute_dtype=m.model.compute_dtype,
      depth=ml_collections.FieldReference(None, field_type=int),
      # per-layer fields: () the preset's, one value every layer's, or one value per layer
      **{k: () for k in LAYER_FIELDS}))
  c.train = ml_collections.ConfigDict(dataclasses.asdict(m.train))
  c.train.save_every = 100
  c.mesh = ml_collections.ConfigDict(dict(data=1, rows=1, cols=1))
  c.data = ml_collections.ConfigDict(dict(
      dir=ml_collections.FieldReference(None, field_type=str),  # None: the embedded corpus
      frames_per_video=48, cache_dir=ml_collections.FieldReference(None, field_type=str),
      short_side=0,  # frames are stored at this shorter side; 0: 3x the crop (`data.source`)
      crop_scale=(1.0, 1.0),  # crops of windows crop * s wide, s in [lo, hi], shrunk to the crop
      workers=0))  # frame-decoding worker processes per process; 0: one per core
  c.eval = ml_collections.ConfigDict(dict(
      enabled=True, nonfaces_per_face=2, still_views=8, linear_filters=1000, top_k=16,
      stimulus_steps=200, seed=0, shifted_views=2,
      blas_threads=1,  # BLAS threads while evaluating (evaluate.BLAS_THREADS); 0: BLAS's default
      unit_layers=(),  # the layers (from 1) the face unit is chosen among; (): every layer
      # choose every unsupervised detector on the selection images and their shifted/scaled views
      # together (`holdout.score_fold`), not on the images as they are only
      choose_shifted=False,
      # the linear-filter control's crops: "training" (the run's own data settings) or "preset"
      # (the preset's data settings on the same footage), so that a lever changing the training
      # crops is judged against the bar the default's crops set (`control_source`)
      control_crops="training",
      # a user's labelled folders (sub-folder = source) instead of the embedded labelled set
      faces_dir=ml_collections.FieldReference(None, field_type=str),
      nonfaces_dir=ml_collections.FieldReference(None, field_type=str)))
  # Weights & Biases as well as TensorBoard (`lcnet.wandblog`; pip install wandb; WANDB_MODE=offline
  # keeps it on disk)
  c.log = ml_collections.ConfigDict(dict(wandb=False, wandb_project="lcnet"))
  # this process's malloc serves XLA:CPU's per-step buffers from the heap (`lcnet.hostmem`): no
  # page faults per step, the peak memory kept until exit. None: on a one-device mesh only, where
  # it made the step 1.14x faster; on a 2x2 mesh it made training 1.15x slower (`keep_heap_wanted`)
  c.host = ml_collections.ConfigDict(dict(
      keep_heap=ml_collections.FieldReference(None, field_type=bool)))
  for section, values in EXPERIMENT[preset].items():
    c[section].update(values)
  return c


def lcnet_config(c: ml_collections.ConfigDict):
  """The library's frozen Config for the experiment's settings (validated here, before compile)."""
  from lcnet import data, holdout, model
  from lcnet.config import MeshConfig, ModelConfig, TrainConfig, replace
  base = model.preset(c.preset)
  depth = c.model.depth or len(base.model.layers)
  if not 1 <= depth <= len(base.model.layers):
    raise ValueError(f"model.depth={depth}: the {c.preset} preset has "
                     f"{len(base.model.layers)} layers; give 1..{len(base.model.layers)}")
  per_layer = layer_values(c.model, depth)
  layers = tuple(replace(l, **{k: v[i] for k, v in per_layer.items()})
                 for i, l in enumerate(base.model.layers[:depth]))
  holdout.check_unit_layers(c.eval.unit_layers, depth)
  if c.eval.choose_shifted and c.eval.shifted_views < 1:
    raise ValueError(f"eval.choose_shifted=True chooses on the shifted views, but "
                     f"eval.shifted_views={c.eval.shifted_views}: give eval.shifted_views >= 1 or "
                     f"leave eval.choose_shifted False")
  if c.eval.control_crops not in CONTROL_CROPS:
    raise ValueError(f"eval.control_crops={c.eval.control_crops!r} is not one of {CONTROL_CROPS}: "
                     f"'training' samples the linear filters from the run's training crops, "
                     f"'preset' from the crops of the preset's data settings")
  data.check_crop_scale(c.data.crop_scale)
  data.check_short_side(c.data.short_side, c.model.image_size)
  if c.eval.control_crops == "preset":
    data.check_short_side(get_config(c.preset).data.short_side, c.model.image_size)
  mc = ModelConfig(image_size=(c.model.image_size,) * 2, channels=c.model.channels, layers=layers,
                   unit_norm_encoder=c.model.unit_norm_encoder, init_scale=c.model.init_scale,
                   whiten_input=c.model.whiten_input, local_op=c.model.local_op.to_dict(),
                   param_dtype=c.model.param_dtype, compute_dtype=c.model.compute_dtype)
  return base.replace(name=f"youtube_faces/{c.preset}", model=mc,
                      train=TrainConfig(**c.train.to_dict()), mesh=MeshConfig(**c.mesh.to_dict()))


def layer_values(m: ml_collections.ConfigDict, depth: int) -> dict[str, tuple]:
  """{field: one value per layer} for the per-layer fields set in `m` (one value, or `depth`);
  ValueError naming the field, its layer count or type, and what to give instead."""
  out = {}
  for k, kind in LAYER_FIELDS.items():
    v = tuple(m[k])
    if not v:
      continue
    if len(v) not in (1, depth):
      raise ValueError(f"model.{k}={','.join(map(str, v))} gives {len(v)} values for a model of "
                       f"{depth} layers; give one value for every layer or {depth}, one per layer")
    wrong = [x for x in v if isinstance(x, bool) or not isinstance(x, (int, float))
             or (kind is int and not float(x).is_integer())]
    if wrong:
      raise ValueError(f"model.{k}={','.join(map(str, v))}: {wrong[0]!r} is not "
                       f"{'a whole number' if kind is int else 'a number'}")
    out[k] = tuple(kind(x) for x in (v * depth if len(v) == 1 else v))
  return out


def apply_overrides(c: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """Command-line overrides into c, the convention of big_vision and the flax examples
  (`ml_collections.config_flags`): `--config.a.b=value` or `--config.a.b value`, typed by the
  field they set; a mistyped field exits naming it and the fields there. A field set twice takes
  the last value (absl would join a tuple field's values into one tuple).

  A preset's greedy `train.stage_steps` follows the other overrides unless it is set itself:
  rescaled to a new `train.steps`, cut to `model.depth` layers, dropped for `train.mode='joint'`.
  """
  flags_ = []  # [(path, tokens)], the last setting of each path only
  for a in overrides:
    if flags_ and flags_[-1][0] and len(flags_[-1][1]) == 1 and "=" not in flags_[-1][1][0]:
      flags_[-1][1].append(a)  # the value of "--config.a.b value", as it is
      continue
    a = a if a.startswith("--") else f"--config.{a}"  # "a.b=v", the short form
    path = a[len("--config."):].partition("=")[0] if a.startswith("--config.") else None
    flags_ = [f for f in flags_ if path is None or f[0] != path] + [(path, [a])]
  touched = {path for path, _ in flags_ if path}
  _set(c, [t for _, tokens in flags_ for t in tokens])
  if "train.stage_steps" in touched or not c.train.stage_steps:
    return
  if c.train.mode != "greedy":
    c.train.stage_steps = ()
    return
  stages = list(c.train.stage_steps)[:c.model.depth or None]
  total = c.train.steps if "train.steps" in touched else sum(stages)
  scaled = [max(1, total * s // sum(stages)) for s in stages]
  scaled[0] += total - sum(scaled)
  c.train.steps, c.train.stage_steps = total, tuple(scaled)


def split_config_args(argv: list[str]) -> tuple[list[str], list[str]]:
  """(the --config.* arguments with their values, the other arguments)."""
  config, rest, i = [], [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config."):
      config.append(a)
      if "=" not in a and i + 1 < len(argv):
        config.append(argv[i + 1])
        i += 1
    else:
      rest.append(a)
    i += 1
  return config, rest


def _set(c: ml_collections.ConfigDict, overrides: list[str]) -> None:
  from absl import flags
  from ml_collections import config_flags
  argv = ["youtube_faces", *overrides]
  fv = flags.FlagValues()
  try:
    config_flags.DEFINE_config_dict("config", c, flag_values=fv, sys_argv=argv, lock_config=False)
    fv(argv)
  except (AttributeError, KeyError, flags.Error) as e:
    arg = next((a for a in overrides if a.startswith("--config.")), "")
    path = arg[len("--config."):].partition("=")[0].split(".")
    node = c
    for h in path[:-1]:
      if not isinstance(node.get(h), ml_collections.ConfigDict):
        break
      node = node[h]
    fields = sorted(node.keys())
    why = " ".join(str(e).replace("\\n", " ").replace("\\", "").replace("'", "").split())
    raise SystemExit(f"--config override {' '.join(overrides)}: {why}; fields here: {fields}") from None


class Progress:
  """A tqdm bar over the training steps: step, loss per layer, steps/s, ETA."""

  def __init__(self, total: int, initial: int, layers: int):
    from tqdm.auto import tqdm
    self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                    file=sys.stdout, mininterval=1.0)
    self.layers, self.last = layers, initial

  def __call__(self, step: int, m: dict):
    self.bar.update(step + 1 - self.last)
    self.last = step + 1
    losses = {f"L{i + 1}": f"{m[f'layer{i + 1}/loss']:.3g}" for i in range(self.layers)
              if f"layer{i + 1}/loss" in m}
    self.bar.set_postfix(total=f"{m['total']:.4g}", **losses, refresh=False)

  def close(self):
    self.bar.close()


# The settings that decide which crops training sees. A run resumed with other values would train
# its later steps on other data than its earlier ones, and its experiment.json (rewritten) would
# describe only the later ones; so resuming requires the same values.
RESUME_DATA_FIELDS = ("dir", "frames_per_video", "short_side", "crop_scale")


def check_resume(c: ml_collections.ConfigDict, workdir: str) -> None:
  """ValueError naming each data setting that differs from the one a checkpointed run in
  `workdir` began with (its experiment.json); nothing to check in a new run directory."""
  path, ckpts = os.path.join(workdir, "experiment.json"), os.path.join(workdir, "checkpoints")
  # the file system only (no orbax, no jax): this runs before jax.distributed.initialize()
  if not (os.path.exists(path) and os.path.isdir(ckpts)
          and any(n.isdigit() for n in os.listdir(ckpts))):
    return
  with open(path) as f:
    began = json.load(f).get("data", {})

  def norm(key, value):
    value = json.loads(json.dumps(value))  # tuples as JSON lists, as the file holds them
    return os.path.realpath(value) if key == "dir" and value is not None else value
  diff = [f"data.{k}: {began.get(k)!r} when the run began, {c.data[k]!r} now"
          for k in RESUME_DATA_FIELDS if norm(k, began.get(k)) != norm(k, c.data[k])]
  if diff:
    raise ValueError(f"{workdir} holds a checkpoint of a run trained on other data:\n  "
                     + "\n  ".join(diff) + "\nresume it with the settings it began with, or "
                     "train these in a new --workdir")


def keep_heap_wanted(c: ml_collections.ConfigDict) -> tuple[bool, str]:
  """Whether `run` keeps malloc's heap (`lcnet.hostmem`), and why. `host.keep_heap` None decides by
  the mesh: one device, where XLA:CPU's per-step temporaries are one block big enough to be mapped
  afresh each step (the step 1.14x faster with it); not on a mesh of several devices, where the
  step did not fault its memory in without it and one arena shared by every thread made training
  1.15x slower on a 2x2 mesh (BENCHMARKS.md, "Page faults of the CPU train step")."""
  if c.host.keep_heap is not None:
    return bool(c.host.keep_heap), f"host.keep_heap={c.host.keep_heap}"
  from lcnet.config import MeshConfig
  devices = MeshConfig(**c.mesh.to_dict()).size
  return devices == 1, f"a mesh of {devices} device{'s' * (devices > 1)}"


def training_source(c: ml_collections.ConfigDict, cfg, process_index: int = 0,
                    process_count: int = 1, frames=None):
  """The crops training sees (`data.source`) under the experiment's data settings; `frames`:
  another config's frames_per_video, short_side and crop_scale on the same footage."""
  from lcnet import data
  f = frames or c.data
  return data.source(cfg, c.data.dir, process_index, process_count,
                     frames_per_video=f.frames_per_video, short_side=f.short_side or None,
                     cache_dir=c.data.cache_dir, workers=c.data.workers or None,
                     crop_scale=f.crop_scale)


def control_source(c: ml_collections.ConfigDict, cfg, src):
  """The crops the linear-filter control samples (`eval.control_crops`): `src`, the training
  crops, or those of the preset's own data settings on the same footage."""
  if c.eval.control_crops == "training":
    return src
  p = get_config(c.preset).data
  def settings(d):
    return d.frames_per_video, d.short_side, tuple(map(float, d.crop_scale))
  return src if settings(c.data) == settings(p) else training_source(c, cfg, frames=p)


def run(c: ml_collections.ConfigDict, workdir: str) -> dict:
  """Data -> training (resumable) -> evaluation -> metrics.json, figures, report.html."""
  from lcnet import distributed, hostmem, model, runlog
  cfg = lcnet_config(c)  # bad settings fail here, before any data or compile
  check_resume(c, workdir)
  want, why = keep_heap_wanted(c)
  kept = want and hostmem.keep_heap()  # before any thread of jax allocates
  distributed.initialize()
  log = distributed.configure_logging("experiments")  # process 0 speaks for the run
  log.info("host: malloc %s (%s)", "keeps XLA's buffers on the heap (lcnet.hostmem)" if kept else
           "as the C library sets it", why)
  import jax
  cfg = model.resolved(cfg)  # backend defaults filled in: the config that runs
  log.info("%s", cfg)
  t0 = time.time()
  src = training_source(c, cfg, jax.process_index(), jax.process_count())
  data_s = time.time() - t0
  log.info(f"data: {len(src.images)} frames of {src.report['files']} files ready in {data_s:.1f}s"
           f" ({len(src.report['skipped'])} unreadable files skipped, "
           f"{len(src.report['too_small'])} frames too small; store {src.report['store']})")
  os.makedirs(workdir, exist_ok=True)
  main_process = jax.process_index() == 0  # writes the run's files and shows the progress bar
  if main_process:
    runlog.write_atomically(os.path.join(workdir, "experiment.json"), c.to_json(indent=2))
  # the labelled set before training: a bad --eval-faces folder fails now, not after hours
  lset = labelled_set(c, cfg) if c.eval.enabled and main_process else None
  bar = Progress(cfg.train.steps, _done_steps(workdir), len(cfg.model.layers)) if main_process \
      else None
  wb = None
  if c.log.wandb and main_process:
    from lcnet import wandblog
    wb = wandblog.Writer(workdir, c.to_dict(), c.log.wandb_project)
  try:
    return _train_and_evaluate(c, cfg, src, workdir, lset, bar, wb, data_s)
  finally:
    if wb:
      wb.close()


def _train_and_evaluate(c, cfg, src, workdir, lset, bar, wb, data_s) -> dict:
  import jax

  from lcnet import mesh as mesh_lib
  from lcnet import train
  log = logging.getLogger("experiments")
  t1 = time.time()
  try:
    res = train.fit(cfg, src, workdir=workdir,
                    log=(lambda step, m: (bar(step, m), wb.scalars(step, m))) if wb else bar)
  finally:
    if bar:
      bar.close()
  train_s = time.time() - t1
  if res.stopped:
    log.info("%s", res.stopped)
    return {"stopped": res.stopped}
  log.info(f"trained: {int(res.state.step)} steps in {train_s:.1f}s"
        + (f" (resumed from step {res.resumed_from})" if res.resumed_from else ""))
  out = {"timing_s": {"data": data_s, "train": train_s}, "steps": int(res.state.step),
         "data": data_summary(src.report),
         "final_train_metrics": res.history[-1] if res.history else None}
  if c.eval.enabled:
    params = mesh_lib.host_params(res.state.params, cfg)  # all processes: gathers the shards
    if jax.process_index() == 0:
      out.update(evaluate_run(c, cfg, params, src, workdir, lset, wb))
    if jax.process_count() > 1:  # the others wait here while process 0 evaluates
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("lcnet_youtube_faces_evaluated")
  return out


def _done_steps(workdir: str) -> int:
  from lcnet import checkpoint
  try:
    ckpt = checkpoint.Checkpointer(workdir, read_only=True)
  except FileNotFoundError:
    return 0
  try:
    return ckpt.latest_step() or 0
  finally:
    ckpt.close()


def evaluate_run(c, cfg, params, src, workdir: str, lset, wb=None) -> dict:
  """The face-unit evaluation of trained parameters (NumPy, valid shapes) on a labelled set
  (`labelled_set`), on this process' first device, written into workdir."""
  import jax
  import jax.numpy as jnp

  from lcnet import evaluate, plots, runlog, runs
  from lcnet.config import MeshConfig
  log = logging.getLogger("experiments")
  t0 = time.time()
  cfg = cfg.replace(mesh=MeshConfig())  # evaluation runs unsharded
  net = runs.model_from_params(cfg, jax.tree.map(jnp.asarray, params))
  crops = (evaluate.training_crops(control_source(c, cfg, src), c.eval.linear_filters)
           if c.eval.linear_filters else None)
  rep = evaluate.evaluate(cfg, net, lset, crops, top_k=c.eval.top_k,
                          stimulus_steps=c.eval.stimulus_steps, views=c.eval.shifted_views,
                          unit_layers=tuple(c.eval.unit_layers), threads=c.eval.blas_threads or None,
                          choose_shifted=c.eval.choose_shifted)
  m = evaluate.metrics(rep)
  m["eval_seconds"] = time.time() - t0
  m["data"] = data_summary(src.report)
  m["verdict"] = m["generalisation"]["verdict"]
  figs = {"filters": plots.filters(params), "stimulus": plots.stimulus(rep),
          "histogram": plots.histogram(rep), "top_k": plots.top_k(rep),
          "roc": plots.roc(rep["roc"], {"face_unit": m["face_unit"]["test_auc"],
                                        **{k: v["test_auc"] for k, v in m["controls"].items()}}),
          "invariance": plots.invariance(rep)}
  fig_dir = os.path.join(workdir, "figures")
  os.makedirs(fig_dir, exist_ok=True)
  for name, fig in figs.items():
    fig.savefig(os.path.join(fig_dir, f"{name}.png"), dpi=90)
  runlog.write_atomically(os.path.join(workdir, "metrics.json"), json.dumps(m, indent=2))
  runlog.write_atomically(os.path.join(workdir, "report.html"), report_html(c, cfg, m, list(figs)))
  from lcnet import tblog  # after the files: a failing writer cannot lose the evaluation
  tb = tblog.Writer(workdir)
  try:
    for w in [tb] + ([wb] if wb else []):  # evaluated after the last step
      log_evaluation(w, cfg.train.steps, params, rep)
  finally:
    tb.close()
  if wb:
    wb.summary({"verdict": m["verdict"], **{f"loso/{k}": v["auc"] for k, v in
                                            m["generalisation"]["detectors"].items()},
                **{f"loso_shifted/{k}": v["shifted_auc"] for k, v in
                   m["generalisation"]["detectors"].items()}})
  g = m["generalisation"]
  log.info("leave-one-source-out AUC (mean over %d held-out face sources; worst; shifted/scaled):",
           len(g["folds"]))
  for k, v in g["detectors"].items():
    log.info(f"  {k:20s} {v['auc']:.3f}  worst {v['worst_auc']:.3f} ({v['worst_auc_fold']})  "
             f"shifted {v.get('shifted_auc', float('nan')):.3f}")
  u = m["face_unit"]
  log.info(f"selection/test split view: face unit layer {u['layer']} location {u['location']} map "
           f"{u['map']}: test AUC {u['test_auc']:.3f}, accuracy {u['test_accuracy']:.3f} (chance "
           f"{m['chance_accuracy']:.3f})")
  log.info("%s", m["verdict"])
  log.info(f"report: {os.path.join(workdir, 'report.html')}")
  return {"face_unit": u, "controls": m["controls"], "generalisation": g, "verdict": m["verdict"]}


def log_evaluation(w, step: int, params, rep: dict) -> None:
  """The evaluation into a TensorBoard or W&B writer (`tblog.Writer`, `wandblog.Writer`): each
  layer's filters and the unit's optimal stimulus as images; histograms of
  every layer's weights and of the unit's responses to test faces and non-faces."""
  import numpy as np

  from lcnet import plots
  w.images(step, {f"filters/{k}": mosaic for k, (mosaic, _) in plots.filter_mosaics(params).items()})
  w.images(step, {"unit/optimal_stimulus": rep["stimulus"]["image"]})
  w.histograms(step, {f"weights/{k}/{part}": params[k][part]["kernel"]
                      for k in params for part in ("encoder", "decoder") if part in params[k]})
  r, y = np.asarray(rep["face_unit"]["test_scores"]), np.asarray(rep["test_labels"])
  w.histograms(step, {"unit/responses/faces": r[y == 1], "unit/responses/nonfaces": r[y == 0]})


def data_summary(report: dict) -> dict:
  """The training data's counts for metrics.json and the report: every skipped file by name."""
  return {"files": report["files"], "frames": report["frames"],
          "frames_decoded": report["frames_decoded"], "store": report["store"],
          "skipped_files": report["skipped"], "too_small_frames": len(report["too_small"])}


def labelled_set(c, cfg):
  """The labelled faces and non-faces: the user's folders (`eval.faces_dir`, `eval.nonfaces_dir`)
  or the embedded set built from package files (`lcnet.faces`)."""
  from lcnet import faces
  size, ch = cfg.model.image_size[0], cfg.model.channels
  if c.eval.faces_dir:
    return faces.from_folders(c.eval.faces_dir, c.eval.nonfaces_dir, size, ch)
  return faces.labelled_set(size, ch, nonfaces_per_face=c.eval.nonfaces_per_face,
                            still_views=c.eval.still_views, seed=c.eval.seed)


def report_html(c, cfg, m: dict, figures: list[str]) -> str:
  """One self-contained page: the verdict, the numbers, the figures, the config that ran."""
  import html
  u = m["face_unit"]
  rows = [("face unit (trained)", u["test_auc"], u["test_accuracy"], u["selection_auc"])]
  rows += [(k, v["test_auc"], v["test_accuracy"], v["selection_auc"])
           for k, v in m["controls"].items()]
  table = "".join(f"<tr><td>{html.escape(n)}</td><td>{a:.3f}</td><td>{b:.3f}</td><td>{s:.3f}</td>"
                  f"</tr>" for n, a, b, s in rows)
  trivial = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>"
                    for k, v in m["trivial_aucs"].items())
  src = m.get("by_source", {})
  names = list(next(iter(src.values()), {}))[1:]
  by_src = "<tr><th>test faces</th><th>n</th>" + "".join(
      f"<th>{html.escape(n)}</th>" for n in names) + "</tr>" + "".join(
      f"<tr><td>{html.escape(g)}</td><td>{r['faces']}</td>"
      + "".join(f"<td>{r[n]:.3f}</td>" for n in names) + "</tr>" for g, r in src.items())
  figs = "".join(f'<figure><img src="figures/{f}.png"><figcaption>{f}</figcaption></figure>'
                 for f in figures)
  g = m["generalisation"]
  loso = "".join(
      f"<tr><td>{html.escape(k)}</td><td>{v['auc']:.3f}</td><td>{v['worst_auc']:.3f} "
      f"({html.escape(v['worst_auc_fold'])})</td><td>{v.get('shifted_auc', float('nan')):.3f}</td>"
      f"<td>{v.get('worst_shifted_auc', float('nan')):.3f}</td></tr>"
      for k, v in g["detectors"].items())
  per_fold = "".join(
      f"<tr><td>{html.escape(f['fold'])}</td><td>{f['test_faces']}</td><td>{f['test_nonfaces']}</td>"
      f"<td>{u['layer']}, {u['location']}, {u['map']}</td>"
      + "".join(f"<td>{v['folds'][i]['test_auc']:.3f}</td>" for v in g["detectors"].values())
      + "</tr>" for i, (f, u) in enumerate(zip(g["folds"], g["unit_folds"])))
  fold_head = "".join(f"<th>{html.escape(k)}</th>" for k in g["detectors"])
  return f"""<!doctype html><html><head><meta charset="utf-8"><title>lcnet youtube_faces</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:2px 10px}}
figure{{display:inline-block;margin:6px}}img{{max-width:520px}}</style></head><body>
<h1>lcnet: youtube_faces ({html.escape(c.preset)})</h1>
<p><b>{html.escape(m['verdict'])}</b></p>
<h3>Leave-one-source-out: chosen on the other sources, scored on each held-out face source</h3>
<p>Each detector's unit (filter, pixel) is chosen by source-balanced AUC on all other sources and
scored on the held-out source's faces against non-faces of sources it was not chosen on; then on
the same images shifted by up to 15% of the side and scaled 0.8-1.2.</p>
<table><tr><th>detector</th><th>mean AUC</th><th>worst source</th><th>shifted/scaled</th>
<th>worst shifted</th></tr>{loso}</table>
<table><tr><th>held-out source</th><th>faces</th><th>non-faces</th><th>unit chosen (layer,
location, map)</th>{fold_head}</tr>{per_fold}</table>
<h3>Second view: one selection/test split</h3>
<p>Unit: layer {u['layer']}, location {u['location']}, map {u['map']}, sign {u['sign']:+.0f};
chosen on the selection split only, scored on the held-out test split (disjoint sources).
Chance accuracy {m['chance_accuracy']:.3f}. Cat probe: response at the
{m['cat']['face_percentile']:.0f}th percentile of test faces,
{m['cat']['nonface_percentile']:.0f}th of test non-faces.</p>
<table><tr><th>detector</th><th>test AUC</th><th>test accuracy</th><th>selection AUC</th></tr>
{table}</table>
<h3>Trivial features on the test split (near 0.5 means they cannot separate the classes)</h3>
<table>{trivial}</table>
<h3>Test AUC per face source (that source's faces against every test non-face)</h3>
<table>{by_src}</table>
<p>Counts: {html.escape(json.dumps(m['counts']))}</p>
{data_html(m.get("data"))}
{figs}
<h3>Config</h3><pre>{html.escape(str(cfg))}</pre>
<pre>{html.escape(c.to_json(indent=2))}</pre></body></html>
"""


def data_html(d: dict | None) -> str:
  """The training data's section of the report: counts, and every skipped file with its error."""
  import html
  if not d:
    return ""
  skipped = "".join(f"<li>{html.escape(s['path'])}: {html.escape(s['error'])}</li>"
                    for s in d["skipped_files"])
  return (f"<h3>Training data</h3><p>{d['frames']} frames from {d['files']} files "
          f"({d['frames_decoded']} decoded); {len(d['skipped_files'])} unreadable file(s) skipped, "
          f"{d['too_small_frames']} frame(s) smaller than the input left out. Store: "
          f"{html.escape(d['store'])}</p>" + (f"<ul>{skipped}</ul>" if skipped else ""))


def check_eval_folders(c: ml_collections.ConfigDict) -> None:
  """SystemExit unless the labelled folders (`eval.faces_dir`, `eval.nonfaces_dir`) are both
  given and exist, or neither (the embedded labelled set)."""
  if bool(c.eval.faces_dir) != bool(c.eval.nonfaces_dir):
    raise SystemExit("--eval-faces and --eval-nonfaces go together: give both folders (sub-folders "
                     "are sources), or neither for the embedded labelled set")
  for d in (c.eval.faces_dir, c.eval.nonfaces_dir):
    if d and not os.path.isdir(d):
      raise SystemExit(f"{d}: no such directory (a folder of labelled images, one sub-folder per "
                       f"source)")


def saved_config(ran: dict) -> ml_collections.ConfigDict:
  """The experiment's config from a run's experiment.json, also one written before the layer
  fields took one value per layer (then a number for every layer, or null for the preset's)."""
  c = get_config(ran["preset"])
  for key, value in ran.items():
    if key == "model":
      value = {k: (() if v is None else (v,)) if k in LAYER_FIELDS and not isinstance(v, list)
               else v for k, v in value.items()}
    if isinstance(value, dict):
      c[key].update(value)
    else:
      c[key] = value
  return c


def score_run(args, overrides: list[str]) -> dict:
  """`--score-into DIR`: the evaluation of a run's latest checkpoint, without training, into DIR
  (metrics.json, figures, report.html, experiment.json: the run's settings as scored). Only the
  evaluation's settings may differ from the run's; everything is checked before anything loads."""
  workdir = args.workdir or "runs/youtube_faces"
  saved = os.path.join(workdir, "experiment.json")
  if not os.path.exists(saved) or not os.path.exists(os.path.join(workdir, "config.json")):
    raise SystemExit(f"--score-into: {workdir} holds no run of this experiment (experiment.json, "
                     f"config.json); give the run with --workdir")
  if os.path.realpath(args.score_into) == os.path.realpath(workdir):
    raise SystemExit(f"--score-into {args.score_into} is the run itself; give another directory, "
                     f"so that the run's own metrics.json and report stay as they are")
  other = [a for a in overrides if a.startswith("--config.") and not a.startswith("--config.eval.")]
  if other or args.data or args.steps is not None:
    raise SystemExit(f"--score-into scores the run as it was trained: only --config.eval.* and "
                     f"--eval-faces / --eval-nonfaces may be given, not "
                     f"{other or ['--data' if args.data else '--steps']}")
  with open(saved) as f:
    c = saved_config(json.load(f))
  for flag, field in ((args.eval_faces, "faces_dir"), (args.eval_nonfaces, "nonfaces_dir")):
    if flag is not None:
      overrides.insert(0, f"--config.eval.{field}={flag}")
  apply_overrides(c, overrides)
  c.eval.enabled = True
  try:
    lcnet_config(c)  # e.g. eval.unit_layers against the run's depth
  except ValueError as e:
    raise SystemExit(f"invalid settings: {e}") from None
  check_eval_folders(c)
  step = _done_steps(workdir)
  if not step:
    raise SystemExit(f"--score-into: {workdir} has no checkpoint yet: train it first")
  from lcnet import checkpoint, distributed, runlog
  from lcnet.config import Config
  log = distributed.configure_logging("experiments")
  with open(os.path.join(workdir, "config.json")) as f:
    cfg = Config.from_dict(json.load(f))
  params = checkpoint.load_params(workdir, step)  # the network is built once, by evaluate_run
  log.info("%s", cfg)
  lset = labelled_set(c, cfg)  # a bad folder fails here, before the training data loads
  src = training_source(c, cfg)  # the linear-filter control's crops
  log.info("scoring %s at step %d of %d into %s", workdir, step, cfg.train.steps, args.score_into)
  os.makedirs(args.score_into, exist_ok=True)
  runlog.write_atomically(os.path.join(args.score_into, "experiment.json"), c.to_json(indent=2))
  return {"scored_run": workdir, "step": step,
          **evaluate_run(c, cfg, params, src, args.score_into, lset)}


def main(argv: list[str] | None = None) -> dict:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides, rest = split_config_args(list(argv))
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS)
  ap.add_argument("--workdir", default=None, help="default: runs/youtube_faces[_PRESET]")
  ap.add_argument("--data", default=None, help="a directory of videos and images (recursive)")
  ap.add_argument("--steps", type=int, default=None, help="= --config.train.steps")
  ap.add_argument("--eval-faces", default=None, metavar="DIR",
                  help="score the face unit on these faces (one sub-folder per source) instead of "
                       "the embedded labelled set; needs --eval-nonfaces")
  ap.add_argument("--eval-nonfaces", default=None, metavar="DIR", help="non-faces for --eval-faces")
  ap.add_argument("--score-into", default=None, metavar="DIR",
                  help="no training: score the run in --workdir again (its latest checkpoint, its "
                       "own settings with this command's --config.eval.* and --eval-faces / "
                       "--eval-nonfaces) into DIR; the run's own files stay as they are")
  ap.add_argument("--print-config", action="store_true")
  args = ap.parse_args(rest)
  if args.score_into:
    return score_run(args, overrides)
  c = get_config(args.preset)
  if args.steps is not None:
    overrides.insert(0, f"--config.train.steps={args.steps}")
  if args.data is not None:
    overrides.insert(0, f"--config.data.dir={args.data}")
  for flag, field in ((args.eval_faces, "faces_dir"), (args.eval_nonfaces, "nonfaces_dir")):
    if flag is not None:
      overrides.insert(0, f"--config.eval.{field}={flag}")
  apply_overrides(c, overrides)
  try:
    lcnet_config(c)
  except ValueError as e:
    raise SystemExit(f"invalid settings: {e}") from None
  if args.print_config:
    print(c)
    return {}
  check_eval_folders(c)
  if c.data.dir is not None and not os.path.isdir(c.data.dir):
    raise SystemExit(f"--data {c.data.dir}: no such directory (give a folder of videos/images, "
                     f"or leave --data out for the embedded corpus)")
  workdir = args.workdir or ("runs/youtube_faces" if args.preset == DEFAULT_PRESET
                             else f"runs/youtube_faces_{args.preset}")
  try:
    check_resume(c, workdir)
  except ValueError as e:
    raise SystemExit(f"cannot resume: {e}") from None
  return run(c, workdir)


if __name__ == "__main__":
  main()
