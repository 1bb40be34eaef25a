"""The sharded model (shard_map over data x rows x cols with halo exchange) equals the unsharded
one on the trainer's own functions: every layer's output, every loss term, every gradient and an
SGD step; the compiled step moves only halos; the state is born sharded."""
import dataclasses
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_reordered_close, assert_trees_reordered_close

from lcnet import halo, model, train
from lcnet import mesh as mesh_lib
from lcnet.config import MeshConfig, geometry

MESHES = [pytest.param(m, marks=pytest.mark.needs_devices(math.prod(m)), id="x".join(map(str, m)))
          for m in [(1, 8, 1), (1, 2, 4), (2, 2, 2), (2, 4, 1), (8, 1, 1), (2, 1, 2)]]
MODES = {"joint": (0, 1, 2), "greedy": (1,)}  # greedy: layer 1 frozen (forward only), layer 2 trains


def tiny(mesh=(1, 1, 1), **train_kw):
  # 23x21: no grid of any layer divides the meshes evenly
  return model.preset("tiny").replace(model=dict(image_size=(23, 21)),
                                      train=dict(batch_size=8, **train_kw), mesh=MeshConfig(*mesh))


def images(cfg, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((cfg.train.batch_size, *cfg.model.image_size, 1)).astype(np.float32)


def reduction_length(cfg) -> int:
  """The longest sum in a step: a loss term adds every position and channel of every example."""
  g = geometry(cfg.model)[0]
  return cfg.train.batch_size * max(g.in_hw[0] * g.in_hw[1] * g.in_channels,
                                     g.out_hw[0] * g.out_hw[1] * g.maps)


def layer_depth(path) -> int:
  """Layer N's values come from N chained layers of reductions."""
  return next(int(k.key[5:]) for k in path if isinstance(k, jax.tree_util.DictKey)
              and str(k.key).startswith("layer"))


@pytest.fixture(scope="module")
def reference():
  cfg = tiny(optimizer="sgd")
  state = train.init_state(cfg)
  x = images(cfg)
  grads = {mode: jax.jit(train.make_layer_grads(cfg, active))(state.params, x)
           for mode, active in MODES.items()}
  stepped, _ = train.make_train_step(cfg)(train.init_state(cfg), x)
  return state, x, grads, stepped.params


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_step_equals_unsharded(mesh, reference):
  """The proof that the partition is right, on the functions `make_train_step` runs: for joint
  and greedy stages, every layer's output, every loss term and every gradient equal the
  unsharded step's within the rounding bound; phantom (padding) positions are exactly zero in the
  outputs and get exactly zero gradient; and one SGD step of the real sharded step moves the
  parameters as the unsharded one does."""
  state, x, grads_ref, stepped_ref = reference
  cfg = tiny(mesh, optimizer="sgd")
  n = reduction_length(cfg)
  m = mesh_lib.mesh_for(cfg)
  sharded = mesh_lib.shard_state(state, cfg)
  xb = mesh_lib.put_batch(x, m, cfg)
  geo = geometry(cfg.model)
  for mode, active in MODES.items():
    grads, metrics, outs = jax.jit(train.make_layer_grads(cfg, active))(sharded.params, xb)
    want_grads, want_metrics, want_outs = grads_ref[mode]
    for i, (g, out, want) in enumerate(zip(geo, outs, want_outs)):
      out = np.asarray(out)
      assert_reordered_close(out[:, :g.pool_hw[0], :g.pool_hw[1]], want, n, i + 1,
                             err_msg=f"{mode}: layer {i + 1} output")
      assert not out[:, g.pool_hw[0]:].any() and not out[:, :, g.pool_hw[1]:].any()
    assert_trees_reordered_close(metrics, want_metrics, n, layer_depth)
    assert_trees_reordered_close(mesh_lib.unshard_params(grads, cfg), want_grads, n, layer_depth)
    for name, layer in grads.items():
      assert layer["encoder"]["kernel"].sharding == sharded.params[name]["encoder"]["kernel"].sharding
      hw = geo[int(name[5:]) - 1].out_hw
      for w in layer.values():
        w = np.asarray(w["kernel"])
        assert not w[hw[0]:].any() and not w[:, hw[1]:].any(), f"{mode}: {name} phantom gradient"
  # one SGD step of the trainer's own step: the update is -lr * gradient (then the unit-norm
  # projection), smooth in the gradient, so it inherits the gradient's rounding bound
  fresh = mesh_lib.shard_state(train.init_state(tiny(optimizer="sgd")), cfg)  # the step donates it
  stepped, _ = train.make_train_step(cfg)(fresh, xb)
  delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                       mesh_lib.unshard_params(stepped.params, cfg), state.params)
  want = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), stepped_ref, state.params)
  assert_trees_reordered_close(delta, want, n, layer_depth)
  assert int(stepped.step) == 1


@pytest.mark.needs_devices(8)
@pytest.mark.parametrize("cols", [1, 3])
def test_sharded_step_with_the_pallas_kernels_equals_the_unsharded_xla_step(reference, cols):
  """The fused Pallas kernels (interpret mode here) inside the shard_map step, on tiles with
  halos, with 1 and 3 columns per program (3: part-filled tiles on these narrow tiles): every
  layer's output, loss term and gradient equal the unsharded XLA step's."""
  state, x, grads_ref, _ = reference
  cfg = tiny((2, 2, 2), optimizer="sgd").replace(model=dict(local_op=dict(contract="pallas",
                                                                          pallas_cols=cols)))
  assert_like_unsharded(cfg, sharded_layer_grads(cfg, state, x, MODES["joint"]), grads_ref["joint"])


def sharded_layer_grads(cfg, state, x, active):
  """The trainer's (gradients, loss terms, layer outputs) on cfg's mesh, from the unsharded state
  and batch."""
  return jax.jit(train.make_layer_grads(cfg, active))(
      mesh_lib.shard_state(state, cfg).params, mesh_lib.put_batch(x, mesh_lib.mesh_for(cfg), cfg))


def assert_like_unsharded(cfg, got, want):
  """Every layer's output (on its real grid), loss term and gradient of the sharded `got` equal
  the unsharded `want` within the rounding bound of cfg's longest sum."""
  (grads, metrics, outs), (want_grads, want_metrics, want_outs) = got, want
  n = reduction_length(cfg)
  for i, (g, out, w) in enumerate(zip(geometry(cfg.model), outs, want_outs)):
    assert_reordered_close(np.asarray(out)[:, :g.pool_hw[0], :g.pool_hw[1]], w, n, i + 1,
                           err_msg=f"layer {i + 1} output")
  assert_trees_reordered_close(metrics, want_metrics, n, layer_depth)
  assert_trees_reordered_close(mesh_lib.unshard_params(grads, cfg), want_grads, n, layer_depth)


def strided(mesh=(1, 1, 1), **local_op):
  """Two layers at stride 2, pooled at stride 1 then 2, on a 31x29 input: the grids are uneven,
  and windows overlap across tiles unevenly (no preset uses strides, a user may)."""
  layers = tuple(model.preset("tiny").model.layers[:2])
  layers = (dataclasses.replace(layers[0], stride=2),
            dataclasses.replace(layers[1], stride=2, pool_size=2, pool_stride=2))
  return tiny(mesh, optimizer="sgd").replace(
      model=dict(image_size=(31, 29), layers=layers, local_op=local_op or {}))


@pytest.mark.needs_devices(8)
@pytest.mark.parametrize("local_op", [{}, {"contract": "pallas", "pallas_cols": 2}],
                         ids=["xla", "pallas"])
def test_a_strided_network_steps_sharded_like_unsharded(local_op):
  """The partition at stride 2 (the presets use stride 1 only): every layer's output, loss term and
  gradient on a 1x2x4 mesh equal the unsharded XLA computation's, with the XLA op and with the
  Pallas kernels (2 columns per program)."""
  ref = strided()
  state, x = train.init_state(ref), images(ref)
  want = jax.jit(train.make_layer_grads(ref, MODES["joint"][:2]))(state.params, x)
  cfg = strided((1, 2, 4), **local_op)
  assert [g.out_hw for g in geometry(cfg.model)] == [(14, 13), (5, 4)]
  assert_like_unsharded(cfg, sharded_layer_grads(cfg, state, x, MODES["joint"][:2]), want)


@pytest.mark.needs_devices(8)
def test_state_is_born_sharded_and_equals_the_unsharded_init():
  cfg = tiny((1, 2, 4), optimizer="adam")
  state = train.init_state(cfg)
  ref = train.init_state(tiny(optimizer="adam"))
  w = state.params["layer2"]["encoder"]["kernel"]
  g = geometry(cfg.model)[1]
  assert w.shape[:2] == (2 * halo.tile(g.out_hw[0], 2), 4 * halo.tile(g.out_hw[1], 4))
  assert {s.data.shape for s in w.addressable_shards} == {(w.shape[0] // 2, w.shape[1] // 4, *w.shape[2:])}
  mu = state.opt_state["layer2"][0].mu["encoder"]["kernel"]
  assert mu.sharding == w.sharding
  # the same random draws; the unit-norm projection sums each filter (at most rf^2 * maps terms)
  # in whatever order the partitioned init program takes
  longest = max(l.rf ** 2 * l.maps for l in cfg.model.layers)
  assert_trees_reordered_close(mesh_lib.unshard_params(state.params, cfg), ref.params, longest)
  # the init program never materialises a whole kernel on a device: its largest array is a tile
  hlo = jax.jit(lambda: train._new_state(cfg, 0),
                out_shardings=jax.tree.map(lambda a: a.sharding, train.abstract_state(cfg))
                ).lower().compile().as_text()
  sizes = [int(np.prod([int(d) for d in m.split(",") if d]))
           for m in re.findall(r"(?:f32|u32|s32)\[([\d,]*)\]", hlo)]
  tile = max(np.prod(w.addressable_shards[0].data.shape) for w in jax.tree.leaves(state.params))
  assert max(sizes) == tile and "all-gather" not in hlo


def test_batch_that_does_not_split_over_data_is_refused():
  with pytest.raises(ValueError, match=r"batch_size=8 does not split over mesh.data=3"):
    tiny((3, 1, 1))


def test_mesh_needing_more_devices_is_refused_before_compiling():
  have = jax.device_count()
  cfg = tiny((2, 2 * have, 1))
  want = 4 * have
  with pytest.raises(ValueError, match=rf"needs {want} devices, but {have} are available.*"
                                        rf"device_count={want}"):
    train.init_state(cfg)


# ------------------------------------------------------------------------------------------------
# The compiled sharded step moves only halos.


def permute_bytes(hlo: str) -> int:
  total = 0
  for m in re.finditer(r"= f32\[([\d,]*)\][^=]*? collective-permute(?:-start)?\(", hlo):
    total += 4 * int(np.prod([int(d) for d in m.group(1).split(",") if d]))
  return total


def window_bytes(py, px, in_hw, out_hw, k, s, pad, n, c):
  """Lower bound of one 2-D halo window (or its transpose): the rows pass moves halo rows of
  whole input-tile width, the cols pass halo columns of window height."""
  ti = (halo.tile(in_hw[0], py), halo.tile(in_hw[1], px))
  to = (halo.tile(out_hw[0], py), halo.tile(out_hw[1], px))
  rows = halo.halo_rows(py, ti[0], to[0], k, s, pad) * ti[1]
  cols = halo.halo_rows(px, ti[1], to[1], k, s, pad) * ((to[0] - 1) * s + k)
  return 4 * n * c * (rows + cols)


def halo_lower_bound(cfg, n):
  """Bytes each device must receive per training step, from the shapes alone. Per layer:
  forward: encoder window of x, pooling window of h, decoder's window transpose, two LCN windows
  (mean and variance) and the per-image scale (N floats from each other device along rows, then
  cols), not after the top layer, whose output no loss uses; backward: the
  pooling window's transpose and the decoder's window (the inputs are constants: no dx)."""
  py, px = cfg.mesh.rows, cfg.mesh.cols
  geo = geometry(cfg.model)
  total = 0
  for i, (lc, g) in enumerate(zip(cfg.model.layers, geo)):
    enc = window_bytes(py, px, g.in_hw, g.out_hw, lc.rf, lc.stride, 0, n, g.in_channels)
    pool = window_bytes(py, px, g.out_hw, g.pool_hw, lc.pool_size, lc.pool_stride, 0, n, lc.maps)
    total += 3 * enc + 2 * pool
    if i + 1 < len(geo):
      p = (lc.lcn_size - 1) // 2
      total += 2 * window_bytes(py, px, g.pool_hw, g.pool_hw, lc.lcn_size, 1, p, n, 1)
      total += 4 * n * ((py - 1) + (px - 1))
  return total


@pytest.mark.parametrize("mesh", [(1, 2, 4), (2, 2, 2)], ids=lambda m: "x".join(map(str, m)))
@pytest.mark.needs_devices(8)
def test_compiled_train_step_moves_only_halos(mesh):
  cfg = tiny(mesh, optimizer="momentum")
  state = train.abstract_state(cfg)
  m = mesh_lib.mesh_for(cfg)
  batch = jax.ShapeDtypeStruct((8, *mesh_lib.canvas_hw(cfg.model.image_size, cfg.mesh), 1),
                               jnp.float32, sharding=mesh_lib.batch_sharding(m))
  hlo = train.make_train_step(cfg).lower(state, batch).compile().as_text()
  assert "all-gather" not in hlo and "all-to-all" not in hlo
  bound = halo_lower_bound(cfg, 8 // cfg.mesh.data)
  got = permute_bytes(hlo)
  assert bound <= got <= 1.2 * bound, (got, bound)


@pytest.mark.needs_devices(8)
def test_the_proof_catches_a_missing_halo_row(reference, monkeypatch):
  """The tolerance is not vacuous: drop one row of one halo transfer and the sharded outputs
  leave the rounding bound (so a wrong partition cannot pass as reordered sums)."""
  state, x, grads_ref, _ = reference
  cfg = tiny((1, 2, 4), optimizer="sgd")
  plan = halo.plan

  def short_plan(*args, **kw):
    transfers = plan(*args, **kw)
    t = transfers[0]
    return [dataclasses.replace(t, length=t.length - 1), *transfers[1:]] if t.length > 1 else transfers

  monkeypatch.setattr(halo, "plan", short_plan)
  _, _, outs = jax.jit(train.make_layer_grads(cfg))(mesh_lib.shard_state(state, cfg).params,
                                                    mesh_lib.put_batch(x, mesh_lib.mesh_for(cfg), cfg))
  g = geometry(cfg.model)[0]
  with pytest.raises(AssertionError):
    assert_reordered_close(np.asarray(outs[0])[:, :g.pool_hw[0], :g.pool_hw[1]],
                           grads_ref["joint"][2][0], reduction_length(cfg), 1)
