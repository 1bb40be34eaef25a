"""The sublayer objective, the stack, presets' parameter counts and config validation."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numerics import assert_trees_reordered_close
from test_ops import naive_l2_pool, naive_local, naive_transpose

from lcnet import model, ops, train
from lcnet.config import Config, LayerConfig, ModelConfig, TrainConfig, geometry


def test_objective_by_hand_single_location():
  # 2x2 image, one 2x2 filter, one map, pooling over the single unit: everything is a dot product.
  cfg = ModelConfig(image_size=(2, 2), channels=1,
                    layers=(LayerConfig(rf=2, maps=1, pool_size=1, lcn_size=1, lam=0.5, eps=0.25),))
  m = model.create(cfg)
  lay = m.layer1
  w1 = np.array([0.5, 0.5, 0.5, 0.5], np.float32)  # unit norm
  w2 = np.array([1.0, 0.0, 0.0, 2.0], np.float32)
  lay.encoder.kernel[...] = w1.reshape(1, 1, 2, 2, 1, 1)
  lay.decoder.kernel[...] = w2.reshape(1, 1, 2, 2, 1, 1)
  x = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
  _, met = lay.objective(x.reshape(1, 2, 2, 1))
  h = 0.5 * (1 + 2 + 3 + 4)  # = 5
  recon = (5 - 1) ** 2 + (0 - 2) ** 2 + (0 - 3) ** 2 + (10 - 4) ** 2  # = 65
  sparsity = 0.5 * np.sqrt(0.25 + h ** 2)
  np.testing.assert_allclose(met["recon"], recon, rtol=1e-6)
  np.testing.assert_allclose(met["sparsity"], sparsity, rtol=1e-6)
  np.testing.assert_allclose(met["loss"], recon + sparsity, rtol=1e-6)


def test_layer_objective_matches_naive_numpy():
  cfg = ModelConfig(image_size=(9, 10), channels=2,
                    layers=(LayerConfig(rf=4, stride=2, maps=3, pool_size=2, pool_stride=1,
                                        lcn_size=3, lam=0.3, eps=0.1),))
  m = model.create(cfg, seed=3)
  x = np.random.default_rng(0).standard_normal((3, 9, 10, 2)).astype(np.float32)
  _, met = m.layer1.objective(x)
  w1 = np.asarray(m.layer1.encoder.kernel[...], np.float64)
  w2 = np.asarray(m.layer1.decoder.kernel[...], np.float64)
  h = naive_local(x.astype(np.float64), w1, (2, 2))
  x_hat = naive_transpose(h, w2, (9, 10), (2, 2))
  recon = np.mean(np.sum((x_hat - x) ** 2, axis=(1, 2, 3)))
  sparsity = 0.3 * np.mean(np.sum(naive_l2_pool(h, 2, 1, 0.1), axis=(1, 2, 3)))
  np.testing.assert_allclose(met["recon"], recon, rtol=1e-4)
  np.testing.assert_allclose(met["sparsity"], sparsity, rtol=1e-4)


def test_stack_shapes_and_unit_norm_init():
  cfg = model.preset("tiny")
  m = model.create(cfg)
  outs = m(np.zeros((2, 20, 20, 1), np.float32))
  for o, g in zip(outs, geometry(cfg.model)):
    assert o.shape == (2, *g.pool_hw, g.maps)
  for i in range(3):
    w = np.asarray(m.layer(i).encoder.kernel[...])
    np.testing.assert_allclose(np.sqrt((w ** 2).sum(axis=(2, 3, 4))), 1.0, rtol=1e-5)


def test_step_gradients_are_each_layers_own_objective_gradient():
  """`train.make_layer_grads` (what every train step runs) against the model's definition written
  here independently: the gradient of the sum of the active layers' objectives, each layer's
  input a constant (stop_gradient), taken through the whole stack at once."""
  cfg = model.preset("tiny")
  gdef, params = nnx.split(model.create(cfg))
  params = nnx.to_pure_dict(params)
  x = np.random.default_rng(1).standard_normal((2, 20, 20, 1)).astype(np.float32)

  def loss(p, active):
    net, h, total = nnx.merge(gdef, p), x, 0.0
    for i in range(max(active) + 1):
      h = jax.lax.stop_gradient(h)
      if i in active:
        h, met = net.layer(i).objective(h)
        total = total + met["loss"]
      else:
        h = net.layer(i)(h)
    return total

  for active in [(1,), (0, 1, 2)]:
    want = jax.grad(loss)(params, active)
    got, _, _ = train.make_layer_grads(cfg, active)(params, x)
    assert sorted(got) == [f"layer{i + 1}" for i in active]
    for name in want:
      if name not in got:  # inactive layers: the reference's gradient is exactly zero
        assert all(float(jnp.abs(v).max()) == 0 for v in jax.tree.leaves(want[name]))
        continue
      # two programs (one jit of the stack, per-layer grads) may sum in other orders
      assert_trees_reordered_close(got[name], want[name], n=x.size * 4, depth=int(name[5:]))


def formula(img, c, layers):
  """Encoder connections by hand: sum Ho*Wo*k*k*C*F with Ho = (H-k)/s+1, pooled (Ho-p)/ps+1."""
  total, h = 0, img
  for (k, s, f, p) in layers:
    ho = (h - k) // s + 1
    total += ho * ho * k * k * c * f
    h, c = ho - p + 1, f
  return total


@pytest.mark.parametrize("name,expect", [
    ("le2012", 2 * (183**2 * 18**2 * 3 * 8 + 162**2 * 18**2 * 8 * 8 + 141**2 * 18**2 * 8 * 8)),
    ("coates2013_11b", 2 * (185**2 * 16**2 * 3 * 20 + 166**2 * 16**2 * 20 * 20
                            + 147**2 * 16**2 * 20 * 20)),
])
def test_preset_parameter_counts(name, expect):
  cfg = model.preset(name)
  n = model.count_params(cfg)
  assert n["trainable"] == expect
  assert n["encoder_connections"] == formula(200, 3, [(x.rf, x.stride, x.maps, x.pool_size)
                                                      for x in cfg.model.layers])
  if name == "le2012":
    assert n["encoder_connections"] > 1.1e9 and n["encoder_connections"] < 1.3e9  # "1 billion"
  else:
    assert abs(n["trainable"] - 11.2e9) / 11.2e9 < 0.01


@pytest.mark.parametrize("name", ["tiny", "cpu_default"])
def test_count_params_equals_allocated(name):
  cfg = model.preset(name)
  params = nnx.state(model.create(cfg))
  assert sum(v.size for v in jax.tree.leaves(params)) == model.count_params(cfg)["trainable"]


@pytest.mark.parametrize("kw,match", [
    (dict(image_size=(16, 16), layers=(LayerConfig(rf=18),)), "layer 1: receptive field 18 is larger"),
    (dict(image_size=(40, 40), layers=(LayerConfig(rf=8), LayerConfig(rf=40))),
     "layer 2: receptive field 40"),
    (dict(image_size=(20, 20), layers=(LayerConfig(rf=4, stride=30),)), "layer 1: stride 30"),
    (dict(image_size=(20, 20), layers=(LayerConfig(rf=18, pool_size=5),)), "layer 1: pool_size 5"),
    (dict(image_size=(20, 20), channels=3, layers=(LayerConfig(rf=4, in_channels=1),)),
     "layer 1: in_channels=1 but its input has 3"),
    (dict(image_size=(30, 30), layers=(LayerConfig(rf=4, maps=8), LayerConfig(rf=4, in_channels=4))),
     "layer 2: in_channels=4 but its input has 8"),
    (dict(image_size=(20, 20), layers=(LayerConfig(rf=0),)), "layer 1: rf must be positive"),
    (dict(image_size=(20, 20), layers=(LayerConfig(rf=4, maps=-2),)), "layer 1: maps must be positive"),
    (dict(image_size=(0, 20)), "image height must be positive"),
    (dict(image_size=(20, 20), layers=()), "layers is empty"),
])
def test_invalid_model_configs_raise_before_allocation(kw, match):
  with pytest.raises(ValueError, match=match):
    ModelConfig(**kw)


@pytest.mark.parametrize("kw,match", [
    (dict(optimizer="rmsprop"), "optimizer"), (dict(mode="layerwise"), "mode"),
    (dict(batch_size=0), "batch_size must be positive"), (dict(learning_rate=-1.0), "learning_rate"),
])
def test_invalid_train_configs(kw, match):
  with pytest.raises(ValueError, match=match):
    TrainConfig(**kw)


def test_config_json_roundtrip_and_unknown_preset():
  for name in model.PRESETS:
    cfg = model.preset(name)
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert "layer 3" in str(cfg)
  with pytest.raises(ValueError, match="unknown preset"):
    model.preset("huge")


def test_model_rejects_wrong_image_shape():
  m = model.create(model.preset("tiny"))
  with pytest.raises(ValueError, match=r"expects images \[N, 20, 20, 1\]"):
    m(np.zeros((2, 20, 20, 3), np.float32))


def test_nested_replace_changes_only_the_named_fields_and_validates():
  cfg = model.preset("tiny")
  new = cfg.replace(train=dict(steps=7), model=dict(image_size=(23, 21)), mesh=dict(rows=2))
  assert (new.train.steps, new.train.optimizer) == (7, cfg.train.optimizer)
  assert new.model.image_size == (23, 21) and new.model.layers == cfg.model.layers
  assert (new.mesh.rows, new.mesh.cols) == (2, 1) and cfg.train.steps == 20  # cfg unchanged
  with pytest.raises(ValueError, match=r"TrainConfig has no field 'step'.*'steps'"):
    cfg.replace(train=dict(step=7))
  with pytest.raises(ValueError, match=r"batch_size=4 does not split over mesh.data=3"):
    cfg.replace(mesh=dict(data=3))


def test_local_op_tuning_is_config_that_is_resolved_printed_and_reaches_the_modules():
  cfg = model.preset("tiny")
  assert (cfg.model.local_op.block_bytes, cfg.model.local_op.contract) == (0, "auto")
  default = ops.default_tuning()
  run = model.resolved(cfg)  # what fit saves and the experiment prints
  assert (run.model.local_op.block_bytes, run.model.local_op.contract) == (default.block_bytes,
                                                                          default.contract)
  assert f"local_op: {default.contract}, {default.block_bytes:,} B blocks" in str(run)
  chosen = cfg.replace(model=dict(local_op=dict(contract="einsum", block_bytes=1)))
  net = model.create(chosen)
  assert net.layer(1).encoder.tuning == ops.LocalTuning(1, "einsum") == net.layer(1).decoder.tuning
  assert Config.from_dict(json.loads(model.resolved(chosen).to_json())) == model.resolved(chosen)
  with pytest.raises(ValueError, match=r"model.local_op.contract='fast' is not one of"):
    cfg.replace(model=dict(local_op=dict(contract="fast")))
  lo = run.model.local_op
  assert ops.PallasTiles(lo.pallas_cols, lo.pallas_warps, lo.pallas_batch) == default.pallas
  pallas = model.resolved(cfg.replace(model=dict(local_op=dict(contract="pallas", pallas_cols=4,
                                                               pallas_batch=64))))
  assert "local_op: pallas, " in str(pallas)
  assert f"4 columns, {default.pallas.warps} warps and up to 64 examples per program" in str(pallas)
  tiles = model.create(pallas).layer(0).encoder.tuning.pallas
  assert tiles == ops.PallasTiles(cols=4, warps=default.pallas.warps, batch=64)
  for field, bad, rule in [("cols", -1, "an int >= 1"), ("warps", 3, "a power of two <= 32"),
                           ("warps", 64, "a power of two <= 32"), ("batch", 48, "a power of two >= 16")]:
    with pytest.raises(ValueError, match=rf"model.local_op.pallas_{field} must be {rule}.*default.*{bad}"):
      cfg.replace(model=dict(local_op={f"pallas_{field}": bad}))


def test_pallas_tile_shapes_by_hand():
  """Le-2012 layer 1 (C 3, F 8, 18-wide windows, stride 1) at 4 columns and 32 examples: the 4
  windows span (3 + 18) * 3 = 63 input lanes (64); their weights 4 * 8 = 32 map lanes; 21 windows
  cover some of 4 input columns, 21 * 8 = 168 lanes (256), onto 4 * 3 = 12 output lanes (16).
  Layer 2 (C 8): 168 span lanes (256), 32 output lanes."""
  assert ops.pallas_tile_shapes(3, 8, 18, 1, 4, 32) == {
      "input": (32, 64), "weight": (64, 32), "gradient": (32, 256), "decoder weight": (256, 16)}
  assert ops.pallas_tile_shapes(8, 8, 18, 1, 4, 32) == {
      "input": (32, 256), "weight": (256, 32), "gradient": (32, 256), "decoder weight": (256, 32)}
  # stride 2, 1 column: a 5-wide window covers an input column from (1 + 5 - 2) // 2 + 1 = 3
  # windows; 20 maps take 32 lanes each, 96 -> 128
  assert ops.pallas_tile_shapes(1, 20, 5, 2, 1, 16)["gradient"] == (16, 128)


def test_gpu_default_columns_where_every_layer_s_tiles_stay_within_the_measured_size():
  """The GPU default's 4 columns hold for le2012 (its largest tiles, 2**13 elements, are the size
  the 1-column kernels already ran there); the 11.2e9 network's layer 2 (C 20, F 20, 16-wide) at
  4 columns would build a [512, 128] weight tile, so it takes 1 column; a chosen value is kept,
  and the resolved config says which ran."""
  le, big = model.preset("le2012"), model.preset("coates2013_11b").replace(mesh=dict(rows=8, cols=8))
  default = ops.DEFAULT_TUNING["gpu"].pallas
  assert default.cols == 4 and ops.PALLAS_DEFAULT_TILE == 2**13
  assert model.local_tuning(le, "gpu").pallas == default
  assert ops.pallas_tile_shapes(20, 20, 16, 1, 4, 32)["weight"] == (512, 128)
  assert model.local_tuning(big, "gpu").pallas == dataclasses.replace(default, cols=1)
  chosen = big.replace(model=dict(local_op=dict(pallas_cols=2)))
  assert model.local_tuning(chosen, "gpu").pallas.cols == 2
  wide = le.replace(model=dict(local_op=dict(pallas_batch=64)))  # input tile [64, 256] at layer 2
  assert model.local_tuning(wide, "gpu").pallas == ops.PallasTiles(cols=1, warps=default.warps, batch=64)


def test_gpu_default_is_the_pallas_kernels_where_a_device_s_weights_fit_their_indexing():
  """On GPUs "auto" means the Pallas kernels, unless one layer's weights on one device reach
  2**31 elements (their int32 indexing): the 11.2e9 network's layer 2 (2.82e9 weights) on one
  GPU falls back to batched matmuls, and fits again tiled over an 8 x 8 mesh. CPUs keep theirs."""
  le, big = model.preset("le2012"), model.preset("coates2013_11b")
  assert max(g.out_hw[0] * g.out_hw[1] * l.rf ** 2 * g.in_channels * l.maps
             for l, g in zip(big.model.layers, geometry(big.model))) >= 2 ** 31
  assert model.local_tuning(le, "gpu").contract == "pallas"
  assert model.local_tuning(big, "gpu").contract == "einsum"
  tiled = big.replace(mesh=dict(data=1, rows=8, cols=8))
  assert model.local_tuning(tiled, "gpu").contract == "pallas"
  assert model.local_tuning(le, "cpu").contract == ops.DEFAULT_TUNING["cpu"].contract
  chosen = le.replace(model=dict(local_op=dict(contract="einsum")))
  assert model.local_tuning(chosen, "gpu").contract == "einsum"
