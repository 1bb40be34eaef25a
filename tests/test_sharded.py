"""The sharded model (shard_map over data x rows x cols with halo exchange) equals the unsharded
one: every layer's output, every layer's loss, the gradients of all parameters, and several
training steps; the compiled step moves only halos; the state is born sharded."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lcnet import halo, model, spatial, train
from lcnet import mesh as mesh_lib
from lcnet.config import MeshConfig, TrainConfig, geometry

MESHES = [(1, 8, 1), (1, 2, 4), (2, 2, 2), (2, 4, 1), (8, 1, 1)]


def tiny(mesh=(1, 1, 1), **train_kw):
  cfg = model.preset("tiny")
  # 23x21: no grid of any layer divides the meshes evenly
  m = cfg.model.__class__(**{**cfg.model.__dict__, "image_size": (23, 21)})
  tc = TrainConfig(**{**cfg.train.__dict__, "batch_size": 8, **train_kw})
  return cfg.replace(model=m, train=tc, mesh=MeshConfig(*mesh))


def images(cfg, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((cfg.train.batch_size, *cfg.model.image_size, 1)).astype(np.float32)


def assert_tree_close(got, want, rtol=1e-5):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(), err_msg=str(path))


@pytest.fixture(scope="module")
def reference():
  cfg = tiny()
  state = train.init_state(cfg)
  x = images(cfg)
  outs = train.make_apply(cfg)(state.params, x)
  (total, metrics), grads = jax.value_and_grad(train.make_loss(cfg, (0, 1, 2)), has_aux=True)(
      state.params, x)
  return state, x, outs, metrics, grads


@pytest.mark.parametrize("mesh", MESHES, ids=lambda m: "x".join(map(str, m)))
def test_sharded_equals_unsharded(mesh, reference):
  state, x, outs_ref, metrics_ref, grads_ref = reference
  cfg = tiny(mesh)
  m = mesh_lib.mesh_for(cfg)
  sharded = train.shard_state(state, cfg)
  xb = mesh_lib.put_batch(x, m, cfg)
  # forward: every layer's output (valid region equal, phantom positions exactly zero)
  for g, out, ref in zip(geometry(cfg.model), train.make_apply(cfg)(sharded.params, xb), outs_ref):
    out = np.asarray(out)
    np.testing.assert_allclose(out[:, :g.pool_hw[0], :g.pool_hw[1]], ref, rtol=1e-5, atol=1e-5)
    assert not out[:, g.pool_hw[0]:].any() and not out[:, :, g.pool_hw[1]:].any()
  # every layer's loss terms, and the gradients of all parameters
  loss = jax.jit(jax.value_and_grad(train.make_loss(cfg, (0, 1, 2)), has_aux=True))
  (_, metrics), grads = loss(sharded.params, xb)
  assert_tree_close(metrics, metrics_ref)
  assert_tree_close(train.unshard_params(grads, cfg), grads_ref)
  assert grads["layer1"]["encoder"]["kernel"].sharding == sharded.params["layer1"]["encoder"]["kernel"].sharding
  # phantom locations of the kernels get exactly zero gradient (so they stay zero)
  for name, g in zip(grads, geometry(cfg.model)):
    for w in grads[name].values():
      w = np.asarray(w["kernel"])
      assert not w[g.out_hw[0]:].any() and not w[:, g.out_hw[1]:].any()


def test_training_steps_on_a_mesh_match_unsharded():
  steps = 4
  src = lambda cfg, t: images(cfg, seed=100 + t)
  runs = {}
  for mesh in [(1, 1, 1), (2, 2, 2)]:
    cfg = tiny(mesh, optimizer="adam", learning_rate=1e-2)
    state = train.shard_state(train.init_state(tiny()), cfg)
    step = train.make_train_step(cfg, total_steps=steps)
    put = train.batch_putter(cfg, type("S", (), {"batch": lambda self, t: src(cfg, t)})())
    for t in range(steps):
      state, metrics = step(state, put(t))
    runs[mesh] = (train.unshard_params(state.params, cfg), float(metrics["total"]), int(state.step))
  (p1, l1, s1), (p8, l8, s8) = runs[(1, 1, 1)], runs[(2, 2, 2)]
  assert s1 == s8 == steps
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  assert_tree_close(p8, p1, rtol=1e-4)


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
  assert_tree_close(train.unshard_params(state.params, cfg), ref.params, rtol=1e-6)
  # the init program never materialises a whole kernel on a device: its largest array is a tile
  hlo = jax.jit(lambda: train._new_state(cfg, 0),
                out_shardings=jax.tree.map(lambda a: a.sharding, train.abstract_state(cfg))
                ).lower().compile().as_text()
  sizes = [int(np.prod([int(d) for d in m.split(",") if d]))
           for m in re.findall(r"(?:f32|u32|s32)\[([\d,]*)\]", hlo)]
  tile = max(np.prod(w.addressable_shards[0].data.shape) for w in jax.tree.leaves(state.params))
  assert max(sizes) == tile and "all-gather" not in hlo


def test_unwindow_is_the_transpose_of_window():
  mesh = jax.make_mesh((4,), ("rows",), axis_types=(jax.sharding.AxisType.Auto,))
  t_in, t_out, k, s, pad = 6, 5, 5, 1, 2
  f = lambda x: halo.window(x, 1, "rows", 4, t_out, k, s, pad)
  ft = lambda w: spatial.unwindow(w, 1, "rows", 4, t_in, t_out, k, s, pad)
  spec = jax.sharding.PartitionSpec(None, "rows")
  fwd = jax.shard_map(f, mesh=mesh, in_specs=spec, out_specs=spec)
  bwd = jax.shard_map(ft, mesh=mesh, in_specs=spec, out_specs=spec)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 4 * t_in, 3)).astype(np.float32)
  w = rng.standard_normal((2, 4 * ((t_out - 1) * s + k), 3)).astype(np.float32)
  # <window(x), w> == <x, unwindow(w)>
  np.testing.assert_allclose(jnp.vdot(fwd(x), w), jnp.vdot(x, bwd(w)), rtol=1e-5)
  np.testing.assert_allclose(bwd(w), jax.vjp(fwd, x)[1](w)[0], rtol=1e-6, atol=1e-6)


def test_batch_that_does_not_split_over_data_is_refused():
  with pytest.raises(ValueError, match=r"batch_size=8 does not split over mesh.data=3"):
    tiny((3, 1, 1))


def test_mesh_needing_more_devices_is_refused_before_compiling():
  cfg = tiny((4, 2, 2))
  with pytest.raises(ValueError, match=r"needs 16 devices, but 8 are available.*device_count=16"):
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
