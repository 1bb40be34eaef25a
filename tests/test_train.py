"""Training: golden metrics after one step, loss decreases, optimisers, greedy mode, NaN stop."""
import gzip
import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_trees_reordered_close

from lcnet import data, model, train
from lcnet.config import MeshConfig


def smooth_images(n=12, size=40, seed=0):
  """Structured stand-in frames: blurred noise (strongly correlated pixels, like natural images)."""
  rng = np.random.default_rng(seed)
  k = np.exp(-0.5 * (np.arange(-6, 7) / 2.5) ** 2)
  out = []
  for _ in range(n):
    z = rng.standard_normal((size + 12, size + 12))
    z = np.apply_along_axis(lambda r: np.convolve(r, k, "valid"), 0, z)
    z = np.apply_along_axis(lambda r: np.convolve(r, k, "valid"), 1, z)
    out.append(z[:size, :size, None].astype(np.float32))
  return out


def tiny(**train_kw):
  cfg = model.preset("tiny")
  return cfg.replace(train=train_kw)


def source(cfg):
  return data.CropSource(smooth_images(), cfg.model.image_size[0], cfg.train.batch_size, seed=1)


# Golden values of the `tiny` preset after one step on `source(tiny())` (seed 0). Update them only
# when a change of behaviour is intended, and say so in the commit.
GOLDEN = {"total": 2126.6851, "layer1/recon": 646.0745, "layer1/sparsity": 209.0742,
          "layer2/recon": 820.7291, "layer3/recon": 356.4568}
GOLDEN_DECODER1_ABS_SUM = 2037.4147  # sum |w2| of layer 1 after the step


def test_golden_metrics_after_one_step():
  cfg = tiny(steps=1, log_every=1)
  res = train.fit(cfg, source(cfg))
  got = res.history[0]
  for k, v in GOLDEN.items():
    np.testing.assert_allclose(got[k], v, rtol=2e-4, err_msg=f"{k}: update GOLDEN only if intended")
  w2 = np.abs(np.asarray(res.state.params["layer1"]["decoder"]["kernel"], np.float64)).sum()
  np.testing.assert_allclose(w2, GOLDEN_DECODER1_ABS_SUM, rtol=2e-4)


def test_loss_decreases_and_metrics_are_written(tmp_path):
  cfg = tiny(steps=40, log_every=1)
  res = train.fit(cfg, source(cfg), workdir=str(tmp_path))
  first = np.mean([h["total"] for h in res.history[:5]])
  last = np.mean([h["total"] for h in res.history[-5:]])
  assert last < 0.8 * first, (first, last)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 40 and json.loads(lines[-1])["step"] == 39
  assert json.loads((tmp_path / "config.json").read_text())["name"] == "tiny"
  assert int(res.state.step) == 40


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adagrad", "adam"])
def test_each_optimizer_steps_and_keeps_unit_norm(opt):
  cfg = tiny(optimizer=opt, learning_rate=1e-2, schedule="warmup_cosine", warmup_steps=1)
  state = train.init_state(cfg)
  before = jax.tree.map(np.asarray, state.params)
  step = train.make_train_step(cfg)
  state, metrics = step(state, jnp.asarray(source(cfg).batch(0)))
  state, metrics = step(state, jnp.asarray(source(cfg).batch(1)))
  for name in ("layer1", "layer2", "layer3"):
    for part in ("encoder", "decoder"):
      assert not np.allclose(state.params[name][part]["kernel"], before[name][part]["kernel"])
    w = np.asarray(state.params[name]["encoder"]["kernel"])
    np.testing.assert_allclose(np.sqrt((w ** 2).sum(axis=(2, 3, 4))), 1.0, rtol=1e-5)
  assert set(metrics) >= {"layer1", "layer2", "layer3", "total", "grad_norm"}


def test_greedy_trains_one_layer_at_a_time():
  cfg = tiny(mode="greedy", steps=6, log_every=1)
  assert train.stages(cfg) == [((0,), 2), ((1,), 2), ((2,), 2)]
  init = jax.tree.map(np.asarray, train.init_state(cfg).params)
  res = train.fit(cfg, source(cfg))
  for name in ("layer1", "layer2", "layer3"):
    assert not np.allclose(res.state.params[name]["decoder"]["kernel"], init[name]["decoder"]["kernel"])
  # a stage's metrics cover only its own layer
  assert [h["stage"] for h in res.history] == [0, 0, 1, 1, 2, 2]
  assert "layer1/loss" in res.history[0] and "layer2/loss" not in res.history[0]
  assert "layer2/loss" in res.history[2] and "layer1/loss" not in res.history[2]


def test_greedy_stage_steps_and_uneven_splits():
  assert train.stages(tiny(mode="greedy", steps=7)) == [((0,), 2), ((1,), 2), ((2,), 3)]
  cfg = tiny(mode="greedy", steps=9, stage_steps=(5, 2, 2))
  assert train.stages(cfg) == [((0,), 5), ((1,), 2), ((2,), 2)]
  for kw, why in ((dict(mode="joint", steps=9, stage_steps=(5, 2, 2)), "greedy"),
                  (dict(mode="greedy", steps=8, stage_steps=(5, 2, 2)), "sum to train.steps=8"),
                  (dict(mode="greedy", steps=7, stage_steps=(5, 2)), "2 entries for 3 layers")):
    with pytest.raises(ValueError, match=why):
      tiny(**kw)


def test_layer1_trains_the_same_jointly_or_greedily():
  """Each layer's objective sees its input as a constant, so layer 1 after N joint steps equals
  layer 1 after a greedy first stage of N steps: upper layers cost time but do not change it (why
  a greedy schedule can spend its steps on layer 1). SGD, so that the two programs' rounding
  differences stay rounding differences (an Adam step can flip a near-zero coordinate)."""
  kw = dict(optimizer="sgd", learning_rate=1e-4)
  joint = train.fit(tiny(steps=4, **kw), source(tiny())).state.params["layer1"]
  greedy = train.fit(tiny(mode="greedy", steps=6, stage_steps=(4, 1, 1), **kw),
                     source(tiny())).state.params["layer1"]
  init = train.init_state(tiny()).params["layer1"]
  moved = lambda p: jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), p, init)
  assert float(np.abs(moved(joint)["decoder"]["kernel"]).max()) > 1e-3  # it did train
  cfg = tiny()
  n = cfg.train.batch_size * cfg.model.image_size[0] * cfg.model.image_size[1]
  assert_trees_reordered_close(moved(joint), moved(greedy), n, depth=4)  # 4 steps of chained sums


def test_greedy_layer1_frozen_after_its_stage():
  cfg = tiny(mode="greedy", steps=6, log_every=1)
  src = source(cfg)
  state = train.init_state(cfg)
  step1 = train.make_train_step(cfg, (0,), 2)
  for t in range(2):
    state, _ = step1(state, jnp.asarray(src.batch(t)))
  l1 = np.asarray(state.params["layer1"]["encoder"]["kernel"]).copy()
  l2 = np.asarray(state.params["layer2"]["encoder"]["kernel"]).copy()
  step2 = train.make_train_step(cfg, (1,), 2)
  state, _ = step2(state, jnp.asarray(src.batch(2)))
  np.testing.assert_array_equal(state.params["layer1"]["encoder"]["kernel"], l1)
  assert not np.allclose(state.params["layer2"]["encoder"]["kernel"], l2)


def _one_step(cfg, active=None):
  """Each layer's kernels after one step of `make_train_step(cfg, active)` from the seed-0 init,
  and the init, as float64 arrays."""
  grab = lambda p: {k: np.asarray(v["kernel"], np.float64) for k, v in p.items()}
  x = jnp.asarray(source(cfg).batch(0))
  before = {n: grab(p) for n, p in train.init_state(cfg).params.items()}
  state, _ = train.make_train_step(cfg, active)(train.init_state(cfg), x)
  return {n: grab(p) for n, p in state.params.items()}, before


@pytest.mark.parametrize("mode", ["joint", "greedy"])
def test_layer_lr_scale_multiplies_each_layers_step(mode):
  """An SGD step is linear in the rate, so with factors (0.5, 3, 0.25) each layer moves by its
  factor times the step it takes with none. The two programs compute the same gradients (the
  rates are constants after them), so the difference is the rounding of -lr*s*g against s*(-lr*g)
  (a few ulps of the step) and of the subtraction from the init (a few ulps of the weights).
  Greedy: layer 2's stage (layer 1 frozen) takes layer 2's factor."""
  kw = dict(optimizer="sgd", learning_rate=1e-2, steps=3, mode=mode)
  kw.update(stage_steps=(1, 1, 1)) if mode == "greedy" else None
  plain = tiny(**kw).replace(model=dict(unit_norm_encoder=False))  # a projection is not linear
  scaled = plain.replace(train=dict(layer_lr_scale=(0.5, 3, 0.25)))
  active = (1,) if mode == "greedy" else None
  (got, p0), (ref, _) = _one_step(scaled, active), _one_step(plain, active)
  eps = np.finfo(np.float32).eps
  for i, s in enumerate(scaled.train.layer_lr_scale):
    name = f"layer{i + 1}"
    if active is not None and i not in active:
      for k in got[name]:  # frozen: untouched, bit for bit
        np.testing.assert_array_equal(got[name][k], p0[name][k])
      continue
    for k in got[name]:
      step = s * (ref[name][k] - p0[name][k])
      assert np.abs(step).max() > 1e3 * eps * np.abs(p0[name][k]).max(), "the layer did not move"
      tol = 8 * eps * (np.abs(p0[name][k]).max() + np.abs(step).max())
      np.testing.assert_allclose(got[name][k] - p0[name][k], step, rtol=0, atol=tol,
                                 err_msg=f"{name}/{k}, factor {s}")


def test_layer_lr_scale_of_ones_is_no_scale_and_bad_factors_are_refused():
  """Factors of 1 are the unscaled program bit for bit (the rate times 1.0 is the rate), with
  Adam and a cosine schedule (no warmup: the first step's rate is the peak); a wrong count or a
  non-positive factor fails at config time, naming the field and the fix."""
  plain = tiny(schedule="cosine")
  ones = plain.replace(train=dict(layer_lr_scale=(1, 1, 1)))
  got, _ = _one_step(ones)
  want, _ = _one_step(plain)
  for name in want:
    for k in want[name]:
      np.testing.assert_array_equal(got[name][k], want[name][k])
  for bad, why in (((1, 2), "2 entries for 3 layers"), ((1, 0, 1), "positive finite"),
                   ((1, float("nan"), 1), "positive finite")):
    with pytest.raises(ValueError, match=why):
      tiny(layer_lr_scale=bad)


def test_divergence_stops_with_clear_message():
  cfg = tiny(optimizer="sgd", learning_rate=1e30, steps=10)
  with pytest.raises(FloatingPointError, match="training diverged at step"):
    train.fit(cfg, source(cfg))


def test_wrong_batch_shape_is_rejected_before_training():
  cfg = tiny()

  class Bad:
    def batch(self, step):
      return np.zeros((4, 32, 32, 1), np.float32)

  with pytest.raises(ValueError, match=r"needs \(4, 20, 20, 1\)"):
    train.fit(cfg, Bad())


def test_state_repr_is_informative():
  r = repr(train.init_state(tiny()))
  assert "131,584" in r and "layer1" in r


def _same_state(a, b):
  for x, y in zip(jax.tree.leaves(jax.random.key_data(a.rng)) + jax.tree.leaves(
      (a.step, a.params, a.opt_state)), jax.tree.leaves(jax.random.key_data(b.rng)) +
      jax.tree.leaves((b.step, b.params, b.opt_state))):
    assert np.array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("mode", ["joint", "greedy"])
def test_fit_stops_on_sigint_with_a_checkpoint_and_resumes_bit_identically(tmp_path, mode):
  """fit() on a workdir: SIGINT mid-run commits a checkpoint and returns how to resume; running
  fit again continues from it and ends bit-identical to an uninterrupted run, logging every step
  once. In greedy mode the stop falls inside the second layer's stage. The resumed run reads
  its batches through 2 Grain worker processes (joint) or none (greedy): the same batches."""
  import os
  import signal
  cfg = tiny(steps=9, save_every=2, log_every=1, mode=mode)
  want = train.fit(cfg, source(cfg), workdir=str(tmp_path / "straight")).state

  run = str(tmp_path / "run")
  interrupt = lambda step, m: os.kill(os.getpid(), signal.SIGINT) if step == 3 else None
  first = train.fit(cfg, source(cfg), workdir=run, log=interrupt)
  assert first.stopped and "resume" in first.stopped and 4 <= int(first.state.step) < 9
  workers = cfg.replace(train=dict(loader_workers=2 if mode == "joint" else 0))
  with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter("always")
    second = train.fit(workers, source(cfg), workdir=run)
  assert not [w for w in said if "loader_workers" in str(w.message)]  # delivery, not content
  assert second.resumed_from == int(first.state.step) and second.stopped is None
  _same_state(second.state, want)
  with open(os.path.join(run, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f]
  assert [m["step"] for m in logged] == list(range(9))
  # TensorBoard's view of the run directory: the same scalars, each step once
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(run, purge_orphaned_data=True)
  acc.Reload()
  tb = [(e.step, e.value) for e in acc.Scalars("total")]
  assert [s for s, _ in tb] == list(range(9))
  np.testing.assert_allclose([v for _, v in tb], [m["total"] for m in logged], rtol=1e-6)
  again = train.fit(cfg, source(cfg), workdir=run)  # a finished run: nothing more to do
  assert again.resumed_from == 9 and again.history == []


@pytest.mark.needs_devices(8)
def test_large_states_are_initialised_leaf_by_leaf_with_the_same_values(monkeypatch):
  """The one-array-per-jit init of big states gives the same state as one jit of the whole."""
  cfg = tiny()
  want = jax.jit(lambda: train._new_state(cfg, cfg.train.seed))()
  sharded = tiny().replace(mesh=MeshConfig(1, 2, 4))
  want_sharded = train.init_state(sharded)
  monkeypatch.setattr(train, "LEAFWISE_INIT_BYTES", 0)
  _same_state(train.init_state(cfg), want)
  got = train.init_state(sharded)
  _same_state(got, want_sharded)
  assert got.params["layer1"]["encoder"]["kernel"].sharding == \
      want_sharded.params["layer1"]["encoder"]["kernel"].sharding


def test_profile_steps_write_a_trace_of_exactly_those_steps(tmp_path):
  cfg = model.preset("tiny").replace(train=dict(steps=6, profile_steps=(2, 4)))
  train.fit(cfg, source(cfg), workdir=str(tmp_path))
  traces = list((tmp_path / "profile").rglob("perfetto_trace.json.gz"))
  assert len(traces) == 1 and list((tmp_path / "profile").rglob("*.xplane.pb"))
  events = json.load(gzip.open(traces[0]))
  events = events["traceEvents"] if isinstance(events, dict) else events
  steps = sorted(int(e["args"]["step_num"]) for e in events if e.get("name") == "train")
  assert steps == [2, 3]


def test_profile_steps_are_checked_before_anything_compiles(tmp_path):
  with pytest.raises(ValueError, match=r"profile_steps=\(4, 2\) must be \(start, stop\)"):
    model.preset("tiny").replace(train=dict(profile_steps=(4, 2)))
  cfg = model.preset("tiny").replace(train=dict(profile_steps=(0, 1)))
  with pytest.raises(ValueError, match="give fit\\(\\) a workdir"):
    train.fit(cfg, source(cfg))


def test_a_run_whose_checkpoints_cannot_fit_on_disk_is_refused_before_it_trains(tmp_path,
                                                                                 monkeypatch):
  """fit() checks the run directory's free space against the checkpoints it will hold at once
  (keep + 1, as a save commits before the oldest goes) before any step, and leaves no checkpoint
  or metrics behind. The bytes are checked against the parameter count (params and Adam's two
  moments, float32) and the save count by hand."""
  import collections
  import os

  from lcnet import checkpoint
  cfg = tiny(steps=4, save_every=1, keep_checkpoints=2)
  # tiny trains with Adam: a checkpoint holds the float32 params and their two moments, plus
  # a few scalars (step, Adam's count, the rng key's data)
  each = checkpoint.state_bytes(train.abstract_state(cfg))
  assert 0 <= each - 3 * 4 * model.count_params(cfg)["trainable"] < 1024
  # saves by hand: every 5 of 20 steps -> 5, 10, 15, 20; every 6 -> 6, 12, 18 and the final 20
  assert [checkpoint.saves_to_come(a, 20, e) for a, e in ((0, 5), (0, 6), (12, 6), (0, None),
                                                            (20, 5))] == [4, 4, 2, 1, 0]
  # 4 saves, keep 2: at most 3 on disk at once
  usage = collections.namedtuple("usage", "total used free")
  free = {"bytes": 3 * each - 1}
  monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                      lambda path: usage(10**12, 0, free["bytes"]))
  with pytest.raises(checkpoint.NotEnoughDiskError,
                     match=r"up to 3 more checkpoint.*train.keep_checkpoints=2"):
    train.fit(cfg, source(cfg), workdir=str(tmp_path))
  assert not os.path.exists(tmp_path / "metrics.jsonl")
  assert os.listdir(tmp_path / "checkpoints") == []
  free["bytes"] = 3 * each  # exactly enough
  res = train.fit(cfg, source(cfg), workdir=str(tmp_path))
  assert int(res.state.step) == 4
  # resumed to 6 steps with 2 checkpoints kept: one more on disk at a time
  ckpt = checkpoint.Checkpointer(str(tmp_path), cfg.replace(train=dict(steps=6)), every=1, keep=2,
                                 handle_signals=False)
  try:
    assert ckpt.all_steps() == [3, 4]
    assert ckpt.check_room(res.state, 4, 6) == each
  finally:
    ckpt.close()
