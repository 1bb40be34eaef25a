"""Mixed precision: bfloat16 weights and compute against the float32 model, the checkpoint round
trip (and the float32 -> bfloat16 cast on request), and the sharded bfloat16 step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sharded import images, layer_depth, tiny
from test_train import source

from lcnet import checkpoint, ckpt_compat, model, train
from lcnet import mesh as mesh_lib

BF16_U = 2.0 ** -8  # bfloat16's unit roundoff (8 significant bits)
# Per layer, the bfloat16 path rounds the input, the kernel, the local op's output and (backward)
# its cotangent: each a relative error <= u, adding up in every term of the sums that follow.
ROUNDINGS_PER_LAYER = 4


def bf16_rtol(depth: int) -> float:
  return depth * ROUNDINGS_PER_LAYER * BF16_U


def assert_bf16_close(got, want, depth, what=""):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  rtol = bf16_rtol(depth)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max(), err_msg=what)


def rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / np.abs(want).max())


def bf16(cfg, params="float32"):
  return cfg.replace(model=dict(param_dtype=params, compute_dtype="bfloat16"))


def test_bfloat16_compute_is_within_bfloat16_rounding_of_float32():
  """The same float32 weights and images, computed in bfloat16 (products accumulated in
  float32): every layer's loss terms and every gradient are within the bound derived from
  bfloat16's roundoff; and the difference is bfloat16-sized, thousands of times float32's
  roundoff (so the bfloat16 path really ran)."""
  cfg = tiny(optimizer="sgd")
  state = train.init_state(cfg)
  x = images(cfg)
  g32, m32, _ = jax.jit(train.make_layer_grads(cfg))(state.params, x)
  g16, m16, outs16 = jax.jit(train.make_layer_grads(bf16(cfg)))(state.params, x)
  assert all(o.dtype == jnp.float32 for o in outs16)  # pooling and LCN run in float32
  for name in m32:
    d = int(name[5:])
    for term in ("recon", "sparsity", "loss"):
      assert_bf16_close(m16[name][term], m32[name][term], d, f"{name}/{term}")
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g16), jax.tree.leaves(g32)):
    assert a.dtype == jnp.float32  # float32 weights: float32 gradients
    assert_bf16_close(a, b, layer_depth(path), jax.tree_util.keystr(path))
  worst = max(rel_err(a, b) for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)))
  assert worst > BF16_U / 4


def test_float32_master_weights_take_a_bfloat16_step_like_float32():
  """param_dtype float32 with bfloat16 compute (a float32 master copy of the weights): one
  momentum step keeps the weights and the optimiser's state in float32, and moves the weights as
  the float32 step does, within bfloat16's rounding of the gradient (the step is linear in it)
  plus float32's rounding of the weights themselves."""
  cfg = tiny(optimizer="momentum")
  x = images(cfg)
  p0 = jax.tree.map(np.asarray, train.init_state(cfg).params)
  s32, _ = train.make_train_step(cfg)(train.init_state(cfg), x)
  s16, _ = train.make_train_step(bf16(cfg))(train.init_state(bf16(cfg)), x)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves((s16.params, s16.opt_state))
             if jnp.issubdtype(a.dtype, jnp.floating))
  moved = []
  for (path, a), b, w in zip(jax.tree_util.tree_leaves_with_path(s16.params),
                             jax.tree.leaves(s32.params), jax.tree.leaves(p0)):
    w = np.asarray(w, np.float64)
    d16, d32 = np.asarray(a, np.float64) - w, np.asarray(b, np.float64) - w
    rtol = bf16_rtol(layer_depth(path))
    atol = rtol * np.abs(d32).max() + 4 * np.finfo(np.float32).eps * np.abs(w).max()
    np.testing.assert_allclose(d16, d32, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))
    moved.append(np.abs(d32).max() > 0)
  assert all(moved)


def test_bfloat16_weights_halve_the_state_and_train_like_float32():
  cfg = model.preset("tiny").replace(train=dict(steps=60, log_every=10))
  runs = {dt: train.fit(c, source(c)) for dt, c in
          (("float32", cfg), ("bfloat16", bf16(cfg, "bfloat16")))}
  p32, p16 = (jax.tree.leaves(runs[k].state.params) for k in ("float32", "bfloat16"))
  assert all(a.dtype == jnp.bfloat16 for a in p16)
  assert sum(a.nbytes for a in p16) * 2 == sum(a.nbytes for a in p32)
  mu = jax.tree.leaves(runs["bfloat16"].state.opt_state)
  assert any(a.dtype == jnp.bfloat16 for a in mu)  # Adam's moments follow the weights
  l32, l16 = ([h["total"] for h in runs[k].history] for k in ("float32", "bfloat16"))
  assert l32[-1] < 0.25 * l32[0] and l16[-1] < 0.25 * l16[0]
  np.testing.assert_allclose(l16, l32, rtol=0.05)  # the same descent, step for step


def test_bfloat16_checkpoint_round_trip_and_float32_cast_on_request(tmp_path):
  cfg = tiny(optimizer="momentum")
  c16 = bf16(cfg, "bfloat16")
  state16 = train.init_state(c16)
  with checkpoint.Checkpointer(str(tmp_path / "a"), c16, handle_signals=False) as ck:
    ck.save(0, state16, force=True)
    ck.wait()
    back = ck.restore(train.abstract_state(c16))
  for a, b in zip(jax.tree.leaves(back.params), jax.tree.leaves(state16.params)):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))  # as written
  state32 = train.init_state(cfg)
  with checkpoint.Checkpointer(str(tmp_path / "b"), cfg, handle_signals=False) as ck:
    ck.save(0, state32, force=True)
    ck.wait()
  with checkpoint.Checkpointer(str(tmp_path / "b"), c16, handle_signals=False) as ck:
    with pytest.raises(ckpt_compat.ConfigMismatchError,
                       match=r"(?s)checkpoint float32, model bfloat16.*restore\(\.\.\., cast=True\)"):
      ck.restore(train.abstract_state(c16))
    with pytest.warns(ckpt_compat.CheckpointWarning, match="param_dtype"):
      cast = ck.restore(train.abstract_state(c16), cast=True)
  for a, b in zip(jax.tree.leaves(cast.params), jax.tree.leaves(state32.params)):
    assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype(jnp.bfloat16)))  # one rounding


@pytest.mark.needs_devices(8)
def test_sharded_bfloat16_step_equals_the_unsharded_one():
  """bfloat16 rounds at the same points sharded and unsharded; only the float32 sums are
  reordered, and a reordered sum may round to the neighbouring bfloat16 value: one more u."""
  cfg = bf16(tiny(optimizer="sgd"), "bfloat16")
  state = train.init_state(cfg)
  x = images(cfg)
  want_g, want_m, _ = jax.jit(train.make_layer_grads(cfg))(state.params, x)
  sharded = cfg.replace(mesh=dict(data=2, rows=2, cols=2))
  batch = mesh_lib.put_batch(x, mesh_lib.mesh_for(sharded), sharded)
  assert batch.dtype == jnp.bfloat16  # the batch travels in the compute dtype
  grads, metrics, _ = jax.jit(train.make_layer_grads(sharded))(
      mesh_lib.shard_state(state, sharded).params, batch)
  for name in want_m:
    assert_bf16_close(metrics[name]["loss"], want_m[name]["loss"], int(name[5:]))
  got = mesh_lib.unshard_params(grads, sharded)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want_g)):
    assert a.dtype == jnp.bfloat16
    assert_bf16_close(a, b, layer_depth(path), jax.tree_util.keystr(path))
