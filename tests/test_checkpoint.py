"""lcnet.checkpoint: bit-identical round trips, restore onto other meshes (canvas padding),
config mismatch, corrupt and partial checkpoints, and real processes killed with SIGKILL or
stopped with SIGTERM that resume bit-for-bit."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from lcnet import checkpoint, checksums, ckpt_compat, launch, model, train
from lcnet.config import MeshConfig, replace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_ckpt_worker.py")
N = 6  # the kill tests train 2N steps


# -- helpers ---------------------------------------------------------------------------------------


def _mesh(shape, devices=None):
  devices = jax.devices()[:int(np.prod(shape))] if devices is None else devices
  return jax.make_mesh(shape, ("data", "rows", "cols"), axis_types=(AxisType.Auto,) * 3,
                       devices=devices)


def _on_mesh(state, mesh, abstract=False):
  """`state` laid out as on `mesh`: kernel-shaped leaves zero-padded to the canvas of its
  rows x cols and sharded P('rows', 'cols'); everything else replicated. `abstract`: only the
  ShapeDtypeStructs of that (a restore target)."""
  r, q = mesh.shape["rows"], mesh.shape["cols"]

  def put(x):
    pad, spec = [], P()
    if x.ndim == 6:
      pad = [(0, -(-x.shape[0] // r) * r - x.shape[0]), (0, -(-x.shape[1] // q) * q - x.shape[1])]
      pad, spec = pad + [(0, 0)] * 4, P("rows", "cols")
    if abstract:
      shape = tuple(n + hi for n, (_, hi) in zip(x.shape, pad)) if pad else x.shape
      return jax.ShapeDtypeStruct(shape, x.dtype, sharding=NamedSharding(mesh, spec))
    return jax.device_put(jnp.pad(x, pad) if pad else x, NamedSharding(mesh, spec))
  return jax.tree.map(put, state)


def _own_copy(state):
  """state on the default device in buffers of its own. `jax.device_put` of a typed key array
  (which `jax.device_get` leaves on the device) shares its buffer, so a donating step on the put
  state would delete the module fixture's key."""
  def copy(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(jnp.array(jax.random.key_data(x), copy=True),
                                      impl=jax.random.key_impl(x))
    return jnp.array(x, copy=True)
  return jax.tree.map(copy, state)


def _host(x):
  x = jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
  return np.asarray(x)


def _leaves(state):
  return {checksums.path(p): _host(x) for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}


def _assert_same(got, want):
  """Bit-identical on every leaf: params, opt_state, step, rng."""
  a, b = _leaves(got), _leaves(want)
  assert a.keys() == b.keys()
  for k in a:
    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def _assert_canvas(x, v, what):
  """x is v zero-padded at the end (a canvas): the valid region bit-identical, the rest zero."""
  valid = tuple(slice(0, n) for n in v.shape)
  assert x.dtype == v.dtype and np.array_equal(x[valid], v), what
  rest = x.copy()
  rest[valid] = 0
  assert not rest.any(), what


@pytest.fixture(scope="module")
def cfg():
  return model.preset("tiny")


@pytest.fixture(scope="module")
def trained(cfg):
  """The tiny state after 2 steps: non-trivial adam moments, step 2."""
  step = train.make_train_step(cfg)
  state = train.init_state(cfg)
  for i in range(2):
    state, _ = step(state, np.random.default_rng(i).standard_normal((4, 20, 20, 1), np.float32))
  return jax.device_get(state)


# -- in-process --------------------------------------------------------------------------------------


def test_without_every_only_forced_saves_write(tmp_path, cfg, trained):
  with checkpoint.Checkpointer(str(tmp_path), cfg, every=None) as ckpt:
    assert not ckpt.save(1, jax.device_put(trained)) and not ckpt.save(100, jax.device_put(trained))
    assert ckpt.save(7, jax.device_put(trained), force=True)
    assert not ckpt.save(7, jax.device_put(trained), force=True)  # already saved
    ckpt.wait()
    assert ckpt.all_steps() == [7]


def test_round_trip_is_bit_identical_and_keeps_last_k(tmp_path, cfg, trained):
  state = _own_copy(trained)  # donated below
  want = _own_copy(trained)
  step_fn = train.make_train_step(cfg)
  with checkpoint.Checkpointer(str(tmp_path), cfg, every=2, keep=2) as ckpt:
    assert ckpt.latest_step() is None
    assert not ckpt.save(3, state)  # not a multiple of every (nor saved as a run's first save)
    assert ckpt.save(2, state)  # async: returns once the arrays are off the devices ...
    state, _ = step_fn(state, jnp.ones((4, 20, 20, 1)))  # ... so donating them is safe
    _leaves(trained), _leaves(want)  # their own buffers: raises if the step deleted one
    for s in (4, 6):
      ckpt.save(s, jax.device_put(want))
    ckpt.wait()
    assert ckpt.all_steps() == [4, 6]
    got = ckpt.restore(jax.eval_shape(lambda: train.init_state(cfg)), step=4)
  _assert_same(got, want)
  assert got.rng.dtype == want.rng.dtype  # a typed key comes back typed
  assert isinstance(got, train.TrainState)


@pytest.mark.needs_devices(8)
def test_restore_onto_other_meshes(tmp_path, cfg, trained):
  """Saved on a 2x2x2 canvas; restored onto 1x8x1, 1x2x2 (4 devices) and one device."""
  with checkpoint.Checkpointer(str(tmp_path), cfg) as ckpt:
    ckpt.save(2, _on_mesh(trained, _mesh((2, 2, 2))), force=True)
  want = _leaves(trained)
  for mesh in (_mesh((1, 8, 1)), _mesh((1, 2, 2), jax.devices()[4:])):
    target = _on_mesh(trained, mesh, abstract=True)
    with checkpoint.Checkpointer(str(tmp_path), cfg) as ckpt:
      got = ckpt.restore(target)
    assert jax.tree.map(lambda x: x.sharding, got) == jax.tree.map(lambda x: x.sharding, target)
    padded = 0
    for k, x in _leaves(got).items():
      padded += x.shape != want[k].shape
      _assert_canvas(x, want[k], k)
    assert padded >= 6  # layer2 (11x11) pads on both meshes, with its adam moments
  with checkpoint.Checkpointer(str(tmp_path), cfg) as ckpt:
    one = ckpt.restore(jax.eval_shape(lambda: trained))  # valid shapes on one device
  _assert_same(one, trained)
  params = checkpoint.load_params(str(tmp_path))  # a notebook's one call
  assert all(p.sharding.device_set == {jax.devices()[0]} for p in jax.tree.leaves(params))
  _assert_same(params, trained.params)


@pytest.mark.needs_devices(8)
def test_train_api_born_sharded_state_restores_on_other_meshes(tmp_path, cfg):
  """train.init_state on a 2x2x2 mesh (cfg.mesh) -> train.abstract_state of 1x4x1 and 1x1x1."""
  on = lambda *shape: cfg.replace(mesh=MeshConfig(*shape))
  saved = train.init_state(on(2, 2, 2))
  with checkpoint.Checkpointer(str(tmp_path), on(2, 2, 2)) as ckpt:
    ckpt.save(0, saved, force=True)
  # The values saved, cut to the valid (unsharded) shapes: a mesh's init may differ from the
  # unsharded init in the last bit, so the reference is what was written, not a fresh init.
  shapes = {checksums.path(p): ckpt_compat.stored_shape(x) for p, x in
            jax.tree_util.tree_flatten_with_path(train.abstract_state(cfg))[0]}
  plain = {k: v[tuple(slice(0, n) for n in shapes[k])] for k, v in _leaves(saved).items()}
  for shape in ((1, 4, 1), (1, 1, 1)):
    with checkpoint.Checkpointer(str(tmp_path), on(*shape)) as ckpt:
      got = ckpt.restore(train.abstract_state(on(*shape)))
    if shape == (1, 4, 1):
      assert got.params["layer3"]["encoder"]["kernel"].shape[:2] == (8, 6)  # 6 rows -> 4 x 2
    for k, x in _leaves(got).items():
      _assert_canvas(x, plain[k], (shape, k))


def test_config_mismatch_lists_parameters(tmp_path, cfg, trained):
  with checkpoint.Checkpointer(str(tmp_path), cfg) as ckpt:
    ckpt.save(2, jax.device_put(trained), force=True)
  layers = list(cfg.model.layers)
  layers[1] = replace(layers[1], rf=3)
  other = cfg.replace(model=dict(layers=tuple(layers)))
  with checkpoint.Checkpointer(str(tmp_path), other) as ckpt:
    with pytest.raises(checkpoint.ConfigMismatchError) as e:
      ckpt.restore(jax.eval_shape(lambda: train.init_state(other)))
  msg = str(e.value)
  assert "step 2" in msg and "params/layer2/encoder/kernel: checkpoint (11, 11, 4, 4, 4, 4), " \
      "model (12, 12, 3, 3, 4, 4)" in msg and "layer1" not in msg, msg
  # The local op's tuning (speed only) may change on resume without a word; the learning rate
  # is named with both values.
  for changed, warned in [(dict(model=dict(local_op=dict(contract="einsum", pallas_cols=4))), None),
                          (dict(train=dict(learning_rate=0.5)), r"train.learning_rate: .* -> 0.5")]:
    now = cfg.replace(**changed)
    with checkpoint.Checkpointer(str(tmp_path), now) as ckpt, warnings.catch_warnings(record=True) as w:
      warnings.simplefilter("always")
      ckpt.restore(jax.eval_shape(lambda now=now: train.init_state(now)))
    said = [str(x.message) for x in w if issubclass(x.category, checkpoint.CheckpointWarning)]
    assert (re.search(warned, said[0]) if warned else not said), said
  sgd = cfg.replace(train=dict(optimizer="sgd"))
  with checkpoint.Checkpointer(str(tmp_path), sgd) as ckpt:
    with pytest.raises(checkpoint.ConfigMismatchError, match=r"opt_state/\S*mu/\S*kernel: only "
                       r"in the checkpoint \(16, 16, 5, 5, 1, 4\)"):
      ckpt.restore(jax.eval_shape(lambda: train.init_state(sgd)))


@pytest.mark.parametrize("damage", ["flip_one_bit", "truncate"])
def test_corrupt_latest_warns_and_uses_previous(tmp_path, cfg, trained, damage):
  state = jax.device_put(trained)
  with checkpoint.Checkpointer(str(tmp_path), cfg) as ckpt:
    ckpt.save(1, state, force=True)
    ckpt.save(2, state.replace(step=state.step + 7), force=True)
  files = [f for f in glob.glob(str(tmp_path / "checkpoints/2/state/**/d/*"), recursive=True)]
  big = max(files, key=os.path.getsize)
  if damage == "truncate":
    os.truncate(big, os.path.getsize(big) // 2)
  else:
    with open(big, "r+b") as f:
      f.seek(os.path.getsize(big) // 2)
      b = f.read(1)
      f.seek(-1, 1)
      f.write(bytes([b[0] ^ 1]))
  with checkpoint.Checkpointer(str(tmp_path), cfg) as ckpt:
    assert ckpt.latest_step() == 2
    with pytest.warns(checkpoint.CheckpointWarning, match="checkpoint step 2 .* unreadable .* "
                      "falling back to step 1"):
      got = ckpt.restore(jax.eval_shape(lambda: train.init_state(cfg)))
    _assert_same(got, trained)
    assert ckpt.all_steps() == [1]  # the broken one is set aside, kept for inspection
    assert ckpt.save(2, state, force=True)  # and the step can be saved again
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2", "2.corrupt"]


def test_partial_saves_ignored_and_cleaned_missing_dir_errors(tmp_path, cfg, trained):
  with pytest.raises(FileNotFoundError, match="no checkpoints at .*nowhere"):
    checkpoint.load_params(str(tmp_path / "nowhere"))
  with checkpoint.Checkpointer(str(tmp_path), cfg) as ckpt:
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
      ckpt.restore(jax.eval_shape(lambda: trained))
    ckpt.save(1, jax.device_put(trained), force=True)
  partial = tmp_path / "checkpoints" / f"5{checkpoint.TMP_SUFFIX}"
  (partial / "state").mkdir(parents=True)
  (partial / "state" / "junk").write_bytes(b"\0" * 10)
  params = checkpoint.load_params(str(tmp_path))  # a reader ignores it and leaves it alone
  _assert_same(params, trained.params)
  assert partial.exists()
  with checkpoint.Checkpointer(str(tmp_path), cfg) as ckpt:  # a writer removes it
    assert ckpt.latest_step() == 1
  assert not partial.exists()


@pytest.mark.needs_devices(8)
def test_two_processes_restore_then_save(tmp_path, cfg, trained):
  """1 process (2x2x2 mesh) saves; 2 processes x 4 devices restore it onto a 1x4x2 mesh and
  check every local shard, then save it, each process writing its own shards; 1 process
  restores that onto one device."""
  src, dst = tmp_path / "one", tmp_path / "two"
  with checkpoint.Checkpointer(str(src), cfg) as ckpt:
    ckpt.save(2, _on_mesh(trained, _mesh((2, 2, 2))), force=True)
  np.savez(src / "expected.npz", **_leaves(trained))
  cmd = [sys.executable, "-m", "lcnet.launch", "--processes", "2", "--local-devices", "4", "--port",
         str(launch.free_port()), "--", sys.executable, WORKER, "--multihost", str(src), str(dst)]
  env = {k: v for k, v in os.environ.items() if not k.startswith("LCNET_")}
  env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  recs = [json.loads(l.partition(" ")[2]) for l in out.stdout.splitlines() if " {" in l]
  assert sorted(r["process"] for r in recs if r.get("restored") == 2) == [0, 1], out.stdout
  assert all(r["shards_checked"] > 0 for r in recs if "restored" in r)
  assert sorted(os.listdir(dst / "checkpoints" / "2" / "state")).count("ocdbt.process_1") == 1
  with checkpoint.Checkpointer(str(dst), cfg) as ckpt:
    _assert_same(ckpt.restore(jax.eval_shape(lambda: trained)), trained)


# -- real processes --------------------------------------------------------------------------------


class Worker:
  """tests/_ckpt_worker.py in a subprocess; collects its JSON lines and stderr."""

  def __init__(self, workdir, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    self.proc = subprocess.Popen(
        [sys.executable, WORKER, "--workdir", str(workdir), "--steps", str(2 * N), *map(str, args)],
        cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    self.records, self.err = [], []
    self.threads = [threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
                    threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True)]
    for t in self.threads:
      t.start()

  def _read(self, stream, is_out):
    for line in stream:
      if is_out and line.startswith("{"):
        self.records.append(json.loads(line))
      elif not is_out:
        self.err.append(line)

  def wait_for(self, key, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and self.proc.poll() is None:
      for r in list(self.records):
        if key in r:
          return r[key]
      time.sleep(0.02)
    raise AssertionError(f"no {key!r} record: {self.records}\n{''.join(self.err)[-3000:]}")

  def wait(self, timeout=60):
    try:
      rc = self.proc.wait(timeout=timeout)
    finally:
      if self.proc.poll() is None:
        self.proc.kill()
    for t in self.threads:
      t.join(5)
    return rc

  def value(self, key):
    return next((r[key] for r in self.records if key in r), None)


def _final(workdir, cfg):
  with checkpoint.Checkpointer(str(workdir), cfg, handle_signals=False) as ckpt:
    assert ckpt.latest_step() == 2 * N
    return ckpt.restore(jax.eval_shape(lambda: train.init_state(cfg)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cfg):
  """2N steps in one go: what every interrupted run must reproduce bit-for-bit."""
  workdir = tmp_path_factory.mktemp("uninterrupted")
  w = Worker(workdir, "--every", N)
  assert w.wait() == 0, "".join(w.err)
  return _final(workdir, cfg)


def test_sigkill_after_n_and_during_save_resume_bit_identical(tmp_path, cfg, uninterrupted):
  a = Worker(tmp_path, "--every", N // 2, "--pause-at", N)  # checkpoints 3, 6; killed at 6
  assert a.wait_for("paused") == N
  a.proc.send_signal(signal.SIGKILL)
  assert a.wait() == -signal.SIGKILL
  b = Worker(tmp_path, "--every", N // 2, "--kill-in-save", N + N // 2)  # killed saving 9
  assert b.wait() == -signal.SIGKILL
  assert b.value("start") == N and b.value("killing_in_save") == N + N // 2
  names = os.listdir(tmp_path / "checkpoints")
  assert any(checkpoint.TMP_SUFFIX in n for n in names) and str(N + N // 2) not in names, names
  c = Worker(tmp_path, "--every", N // 2)
  assert c.wait() == 0, "".join(c.err)
  assert c.value("start") == N  # the previous checkpoint, intact; the partial save removed
  assert not any(checkpoint.TMP_SUFFIX in n for n in os.listdir(tmp_path / "checkpoints"))
  _assert_same(_final(tmp_path, cfg), uninterrupted)


def test_sigterm_commits_then_exits_cleanly_and_resumes(tmp_path, cfg, uninterrupted):
  a = Worker(tmp_path, "--every", 100, "--pause-at", 4)  # no periodic saves: only the stop's
  assert a.wait_for("paused") == 4
  a.proc.send_signal(signal.SIGTERM)
  a.proc.stdin.write("\n")
  a.proc.stdin.flush()
  assert a.wait() == checkpoint.EXIT_PREEMPTED, "".join(a.err)
  assert a.value("stopped") == 5
  err = "".join(a.err)
  assert "stopped by SIGTERM after step 5" in err and "To resume, run the same command" in err, err
  assert os.listdir(tmp_path / "checkpoints") == ["5"]
  b = Worker(tmp_path, "--every", 100)
  assert b.wait() == 0, "".join(b.err)
  assert b.value("start") == 5
  _assert_same(_final(tmp_path, cfg), uninterrupted)
