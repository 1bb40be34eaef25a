"""The fused Pallas local kernels (interpret mode on CPU) against the naive NumPy loops and the XLA
formulation, forward and every gradient; and they lower to Triton for an NVIDIA GPU."""
import functools
import itertools
import unittest.mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numerics import assert_reordered_close
from test_ops import make, naive_local, naive_local_grads, naive_transpose

from lcnet import ops, pallas_local

CASES = [  # N, H, W, C, kh, kw, sy, sx, F
    (2, 7, 9, 3, 3, 4, 1, 2, 5),
    (1, 11, 8, 2, 5, 3, 3, 2, 4),  # stride does not divide the kernel
    (3, 9, 10, 1, 4, 4, 2, 2, 8),  # channels 1, maps 8
    (2, 6, 13, 4, 2, 5, 4, 3, 3),  # stride larger than kernel rows
    (37, 8, 7, 8, 3, 3, 1, 1, 20),  # channels 8, maps 20, batch over two batch tiles
    (5, 9, 11, 3, 5, 3, 2, 1, 8),  # odd sizes, channels 3
]
PALLAS = ops.LocalTuning(1, "pallas")


TILES = [ops.PallasTiles(), ops.PallasTiles(cols=2, batch=16), ops.PallasTiles(cols=5, batch=64)]


@pytest.mark.parametrize("tiles", TILES, ids=["1col", "2cols_b16", "5cols_b64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernels_match_the_naive_loops(case, tiles):
  """Each kernel against its hand-written loop: forward, input gradient, weight gradient, with
  1 column per program, 2 (a part-filled last tile where the row is odd) and 5 (more than some
  rows have), and batch blocks of 16, 32 and 64 (37 examples: 3, 2 and 1 blocks). The loops sum
  in float64, the kernels in float32 in another order: within the rounding bound of each
  reduction's length."""
  x, w, g, s = make(case)
  _, _, kh, kw, c, f = w.shape
  assert_reordered_close(pallas_local.forward(x, w, s, tiles), naive_local(x, w, s), kh * kw * c)
  dx_ref, dw_ref = naive_local_grads(x, w, s, g)
  assert_reordered_close(pallas_local.input_grad(g, w, x.shape, s, tiles), dx_ref, kh * kw * f)
  assert_reordered_close(pallas_local.weight_grad(x, g, w.shape, s, tiles), dw_ref, x.shape[0])


def _grid(fn, *args):
  (eqn,) = [e for e in jax.make_jaxpr(fn)(*args).eqns if e.primitive.name == "pallas_call"]
  return eqn.params["grid_mapping"].grid


def test_tiles_set_the_grid():
  """`cols` adjacent columns per program: a row of Wo = 9 outputs (W = 11 inputs) takes
  ceil(9 / cols) programs (ceil(11 / cols) for the input gradient), the rows as before; 37
  examples take ceil(37 / batch) batch blocks (the weight gradient loops over them instead)."""
  x, w, g, s = make((37, 9, 11, 3, 3, 3, 1, 1, 4))
  for t, b, out_tiles, in_tiles in [(1, 16, 9, 11), (4, 32, 3, 3), (9, 64, 1, 2), (20, 16, 1, 1)]:
    tiles = ops.PallasTiles(cols=t, batch=b)
    fwd = functools.partial(pallas_local.forward, strides=s, tiles=tiles)
    dx = functools.partial(pallas_local.input_grad, x_shape=x.shape, strides=s, tiles=tiles)
    dw = functools.partial(pallas_local.weight_grad, w_shape=w.shape, strides=s, tiles=tiles)
    assert _grid(fwd, x, w) == (-(-37 // b), out_tiles, 7)
    assert _grid(dx, g, w) == (-(-37 // b), in_tiles, 9)
    assert _grid(dw, x, g) == (3, out_tiles, 7)
  with pytest.raises(ValueError, match="cols must be an int >= 1"):
    ops.PallasTiles(cols=0)
  with pytest.raises(ValueError, match="batch must be a power of two >= 16"):
    ops.PallasTiles(batch=8)


@pytest.mark.parametrize("pallas", [PALLAS, ops.LocalTuning(1, "pallas", ops.PallasTiles(cols=3))],
                         ids=["1col", "3cols"])
@pytest.mark.parametrize("case", CASES[:2] + CASES[4:], ids=str)
def test_pallas_tuning_matches_the_xla_op_in_every_gradient(case, pallas):
  """Through `ops` (the custom VJPs the model uses), with 1 and 3 columns per program: the
  filter's and the untied decoder's values and gradients with the Pallas kernels equal the XLA
  formulation's within the rounding bound, and the decoder's output is the naive transpose."""
  x, w, g, s = make(case)
  _, _, kh, kw, c, f = w.shape
  n = x.shape[0]
  hw = x.shape[1:3]

  def grads(tuning):
    enc = jax.grad(lambda x, w: jnp.sum(g * ops.local_filter(x, w, s, tuning=tuning)), (0, 1))
    dec = jax.value_and_grad(lambda y, w: jnp.sum(x * ops.local_filter_transpose(
        y, w, hw, s, tuning=tuning)), (0, 1))
    return enc(x, w), dec(g, w)

  (dx, dw), (dec, (dy, dwd)) = grads(pallas)
  (dx0, dw0), (dec0, (dy0, dwd0)) = grads(ops.LocalTuning(1 << 20, "einsum"))
  assert_reordered_close(dx, dx0, kh * kw * f)
  assert_reordered_close(dw, dw0, n)
  assert_reordered_close(dec, dec0, x.size * kh * kw * f)
  assert_reordered_close(dy, dy0, kh * kw * c)
  assert_reordered_close(dwd, dwd0, n)
  assert_reordered_close(ops.local_filter_transpose(g, w, hw, s, tuning=pallas),
                         naive_transpose(g, w, hw, s), kh * kw * f)


def test_too_large_an_operand_is_named_before_compiling():
  x = jax.ShapeDtypeStruct((64, 200, 200, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((1024, 1024, 16, 16, 8, 8), jnp.float32)  # 2^34 weights
  with pytest.raises(ValueError, match=r"w\(1024, 1024, 16, 16, 8, 8\) has .* int32 .*einsum"):
    jax.eval_shape(lambda x, w: pallas_local.forward(x, w, (1, 1)), x, w)
  # a tile past Triton's 2**20 elements: 300 columns of the Le-2012 first layer at once
  x = jax.ShapeDtypeStruct((16, 200, 200, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((183, 183, 18, 18, 3, 8), jnp.float32)
  with pytest.raises(ValueError, match=r"weight tile \[1024, 2048\] .* 2\*\*20 .*pallas_cols \(now 300\)"):
    jax.eval_shape(lambda x, w: pallas_local.forward(x, w, (1, 1), ops.PallasTiles(cols=300)), x, w)


def _gpu_target():
  """Lowering for CUDA without a GPU: jax >= 0.12 asks for an abstract GPU to target."""
  if not hasattr(jax.sharding, "AbstractDevice"):
    return unittest.mock.MagicMock()
  dev = jax.sharding.AbstractDevice("NVIDIA H200", None, "gpu")
  return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",),
                                                                  abstract_device=dev))


@pytest.mark.parametrize("shape", [((16, 200, 200, 3), 18, 1, 8, ops.PallasTiles()),
                                   ((16, 200, 200, 3), 18, 1, 8, ops.PallasTiles(cols=4)),
                                   ((64, 179, 179, 8), 18, 1, 8, ops.PallasTiles(cols=8, batch=64)),
                                   ((5, 9, 11, 8), 4, 2, 20, ops.PallasTiles(cols=3))],
                         ids=["le2012_layer1", "le2012_layer1_4cols", "le2012_layer2_b64_8cols", "odd"])
def test_kernels_lower_to_triton_for_an_nvidia_gpu(shape, monkeypatch):
  """The Pallas -> Triton lowering (where Triton's rules, e.g. power-of-two tiles, bite) runs on
  the CPU too: each pass of the Le-2012 first and second layers and an odd shape, with several
  columns per program, become one Triton call, with TF32 and with IEEE float32 products, and in
  bfloat16 (the mixed-precision path's operands)."""
  xs, k, s, f, tiles = shape
  ho, wo = ops.output_size(xs[1], k, s), ops.output_size(xs[2], k, s)
  ws, gs = (ho, wo, k, k, xs[3], f), (xs[0], ho, wo, f)
  monkeypatch.setattr(pallas_local, "_interpret", lambda: False)
  passes = {"forward": (lambda x, w: pallas_local.forward(x, w, (s, s), tiles), xs, ws),
            "input_grad": (lambda g, w: pallas_local.input_grad(g, w, xs, (s, s), tiles), gs, ws),
            "weight_grad": (lambda x, g: pallas_local.weight_grad(x, g, ws, (s, s), tiles), xs, gs)}
  numerics = [(jnp.float32, "default"), (jnp.float32, "highest"), (jnp.bfloat16, "default")]
  for (name, (fn, a, b)), (dtype, precision) in itertools.product(passes.items(), numerics):
    args = [jax.ShapeDtypeStruct(t, dtype) for t in (a, b)]
    with _gpu_target(), jax.default_matmul_precision(precision):
      text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("xla.gpu.triton") == 1, (name, dtype, precision)


def test_the_tuning_reaches_the_triton_calls(monkeypatch):
  """`LocalTuning.pallas` (from model.local_op) reaches every pass: fwd+bwd of
  the op lowers to three Triton calls, each with the warps asked for and the grid of the
  columns asked for (W = 12: 9 output columns in 3 tiles of 4, 12 input columns in 3)."""
  import re
  monkeypatch.setattr(pallas_local, "_interpret", lambda: False)
  x = jax.ShapeDtypeStruct((4, 12, 12, 3), jnp.float32)
  w = jax.ShapeDtypeStruct((9, 9, 4, 4, 3, 8), jnp.float32)
  for cols, warps in [(1, 2), (4, 4)]:
    tuning = ops.LocalTuning(1, "pallas", ops.PallasTiles(cols=cols, warps=warps))
    # value and gradients: with grad alone, jax 0.12 drops the unused forward call
    fn = jax.value_and_grad(lambda x, w, t=tuning: ops.local_filter(x, w, (1, 1), tuning=t).sum(),
                            (0, 1))
    with _gpu_target():
      text = jax.jit(fn).trace(x, w).lower(lowering_platforms=("cuda",)).as_text()
    assert re.findall(r"num_warps = (\d+)", text) == [str(warps)] * 3
    grids = re.findall(r"grid_x = (\d+) : i32, grid_y = (\d+) : i32, grid_z = (\d+)", text)
    tiles = -(-9 // cols)
    assert sorted(grids) == sorted([("1", str(tiles), "9"), ("1", str(-(-12 // cols)), "12"),
                                    ("4", str(tiles), "9")])


@pytest.mark.needs_devices(2)
@pytest.mark.parametrize("case", [4, 3, 5], ids=["stride1", "stride4x3", "stride2x1"])
def test_under_shard_map_the_emulated_kernels_equal_interpret_mode(case):
  """Inside shard_map (operands varying over mesh axes) the CPU runs the same kernel bodies
  vmapped over the grid instead of Pallas interpret mode: both give the same values, at stride 1
  and at strides that do and do not divide the kernel."""
  x, w, g, s = make(CASES[case])
  mesh = jax.make_mesh((2,), ("d",), axis_types=(jax.sharding.AxisType.Auto,))
  spec = jax.sharding.PartitionSpec("d")
  _, _, kh, kw, c, f = w.shape

  def passes(x, g):  # 3 columns per program: part-filled tiles on these narrow outputs
    t = ops.PallasTiles(cols=3)
    return (pallas_local.forward(x, w, s, t), pallas_local.input_grad(g, w, x.shape, s, t),
            pallas_local.weight_grad(x, g, w.shape, s, t))

  sharded = jax.jit(jax.shard_map(lambda x, g: tuple(v[None] for v in passes(x, g)), mesh=mesh,
                                  in_specs=(spec, spec), out_specs=spec))
  half = x.shape[0] // 2  # examples per device
  x2, g2 = x[:2 * half], g[:2 * half]
  y, dx, dw = sharded(x2, g2)
  for d in range(2):
    part = slice(half * d, half * d + half)
    y0, dx0, dw0 = passes(x2[part], g2[part])
    assert_reordered_close(y[d], y0, kh * kw * c)
    assert_reordered_close(dx[d], dx0, kh * kw * f)
    assert_reordered_close(dw[d], dw0, half)


def test_bfloat16_operands_accumulate_in_float32_like_the_xla_op():
  """bfloat16 inputs and weights, products accumulated in float32 and the result rounded once
  to bfloat16 by both paths: they differ by at most that last rounding (2 units of 2**-8)."""
  x, w, g, s = (a.astype(jnp.bfloat16) if hasattr(a, "astype") else a for a in make(CASES[4]))

  def passes(tuning):
    y, vjp = jax.vjp(lambda x, w: ops.local_filter(x, w, s, tuning=tuning), x, w)
    return (y, *vjp(g))

  u = 2.0 ** -8
  for got, want in zip(passes(PALLAS), passes(ops.LocalTuning(1 << 20, "einsum"))):
    assert got.dtype == want.dtype == jnp.bfloat16
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    np.testing.assert_allclose(got, want, rtol=2 * u, atol=2 * u * np.abs(want).max())
