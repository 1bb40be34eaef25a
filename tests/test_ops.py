"""lcnet.ops against naive NumPy loops and lax.conv_general_dilated_local, forward and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads
from numerics import assert_reordered_close

from lcnet import ops, patches

CASES = [  # N, H, W, C, kh, kw, sy, sx, F
    (2, 7, 9, 3, 3, 4, 1, 2, 5),
    (1, 11, 8, 2, 5, 3, 3, 2, 4),  # stride does not divide the kernel
    (3, 10, 10, 1, 4, 4, 2, 2, 2),
    (2, 6, 13, 4, 2, 5, 4, 3, 3),  # stride larger than kernel rows
]


def naive_local(x, w, s):
  n, h, wd, c = x.shape
  ho, wo, kh, kw, _, f = w.shape
  y = np.zeros((n, ho, wo, f))
  for oy in range(ho):
    for ox in range(wo):
      patch = x[:, oy * s[0]:oy * s[0] + kh, ox * s[1]:ox * s[1] + kw, :]
      y[:, oy, ox] = np.einsum("nijc,ijcf->nf", patch, w[oy, ox])
  return y


def naive_local_grads(x, w, s, g):
  """Hand-derived gradients of sum(g * local_filter(x, w)) w.r.t. x and w."""
  ho, wo, kh, kw, _, _ = w.shape
  dx, dw = np.zeros_like(x), np.zeros_like(w)
  for oy in range(ho):
    for ox in range(wo):
      sl = (slice(None), slice(oy * s[0], oy * s[0] + kh), slice(ox * s[1], ox * s[1] + kw))
      dw[oy, ox] = np.einsum("nijc,nf->ijcf", x[sl], g[:, oy, ox])
      dx[sl] += np.einsum("ijcf,nf->nijc", w[oy, ox], g[:, oy, ox])
  return dx, dw


def naive_transpose(y, w, in_hw, s):
  n = y.shape[0]
  ho, wo, kh, kw, c, _ = w.shape
  x = np.zeros((n, *in_hw, c))
  for oy in range(ho):
    for ox in range(wo):
      x[:, oy * s[0]:oy * s[0] + kh, ox * s[1]:ox * s[1] + kw] += np.einsum(
          "nf,ijcf->nijc", y[:, oy, ox], w[oy, ox])
  return x


def make(case, seed=0):
  n, h, wd, c, kh, kw, sy, sx, f = case
  ho, wo = ops.output_size(h, kh, sy), ops.output_size(wd, kw, sx)
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, h, wd, c)).astype(np.float32)
  w = rng.standard_normal((ho, wo, kh, kw, c, f)).astype(np.float32)
  g = rng.standard_normal((n, ho, wo, f)).astype(np.float32)
  return x, w, g, (sy, sx)


@pytest.mark.parametrize("case", CASES)
def test_local_filter_forward_matches_naive_and_lax(case):
  x, w, _, s = make(case)
  y = np.asarray(ops.local_filter(x, w, s))
  np.testing.assert_allclose(y, naive_local(x, w, s), rtol=1e-4, atol=1e-4)
  ho, wo, kh, kw, c, f = w.shape
  w_lax = w.transpose(0, 1, 4, 2, 3, 5).reshape(ho, wo, c * kh * kw, f)
  y_lax = lax.conv_general_dilated_local(x, w_lax, s, "VALID", (kh, kw),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(y, np.asarray(y_lax), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_local_filter_gradients_match_naive(case):
  x, w, g, s = make(case)
  dx, dw = jax.grad(lambda x, w: jnp.sum(g * ops.local_filter(x, w, s)), argnums=(0, 1))(x, w)
  dx_ref, dw_ref = naive_local_grads(x, w, s, g)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block,contract", [(1, "einsum"), (1 << 30, "einsum"),
                                            (1 << 30, "broadcast")])
def test_every_backend_tuning_gives_the_same_gradients(block, contract):
  """The GPU form (batched matmuls, one block) and the CPU form (broadcast sums, row blocks)
  both match the naive loops and the default tuning, for the filter (forward and gradients)
  and the decoder."""
  tuning = ops.LocalTuning(block, contract)
  x, w, g, s = make(CASES[1])
  y = ops.local_filter(x, w, s, tuning=tuning)
  np.testing.assert_allclose(y, naive_local(x, w, s), rtol=1e-4, atol=1e-4)
  assert_reordered_close(y, ops.local_filter(x, w, s), np.prod(w.shape[2:5]))  # k*k*C per output
  grads = lambda t: jax.grad(lambda x, w: jnp.sum(g * ops.local_filter(x, w, s, tuning=t)),
                             argnums=(0, 1))(x, w)
  (dx, dw), (dx0, dw0) = grads(tuning), grads(None)
  dx_ref, dw_ref = naive_local_grads(x, w, s, g)
  np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dw, dw_ref, rtol=1e-4, atol=1e-4)
  xt = ops.local_filter_transpose(g, w, x.shape[1:3], s, tuning=tuning)
  np.testing.assert_allclose(xt, naive_transpose(g, w, x.shape[1:3], s), rtol=1e-4, atol=1e-4)
  # against the default tuning: the same sums (k*k*F per input pixel, N per weight) reordered
  k, f, n = w.shape[2], w.shape[-1], x.shape[0]
  assert_reordered_close(dx, dx0, k * k * f)
  assert_reordered_close(dw, dw0, n * k * k)
  assert_reordered_close(xt, ops.local_filter_transpose(g, w, x.shape[1:3], s), k * k * f)


def test_bad_tuning_is_named():
  with pytest.raises(ValueError,
                     match=r"contract must be one of \('broadcast', 'einsum', 'pallas'\).*'fast'"):
    ops.LocalTuning(1 << 20, "fast")
  with pytest.raises(ValueError, match="block_bytes"):
    ops.LocalTuning(0, "einsum")


def test_local_filter_second_order_and_numerical_gradients():
  x, w, _, s = make(CASES[1])
  f = lambda x, w: jnp.sum(jnp.sin(ops.local_filter(x, w, s)))
  check_grads(f, (x.astype(np.float64), w.astype(np.float64)), order=2, modes=("rev",),
              atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("padding", ["SAME", ((1, 2), (0, 3))])
def test_local_filter_padding_equals_explicitly_padded_input(padding):
  x, _, _, s = make(CASES[0])
  pads = ops.resolve_padding(padding, x.shape[1:3], (3, 4), s)
  xp = np.pad(x, ((0, 0), *pads, (0, 0)))
  ho, wo = ops.output_size(xp.shape[1], 3, s[0]), ops.output_size(xp.shape[2], 4, s[1])
  w = np.random.default_rng(1).standard_normal((ho, wo, 3, 4, 3, 2)).astype(np.float32)
  np.testing.assert_allclose(ops.local_filter(x, w, s, padding), naive_local(xp, w, s),
                             rtol=1e-4, atol=1e-4)
  if padding == "SAME":
    assert (ho, wo) == (-(-x.shape[1] // s[0]), -(-x.shape[2] // s[1]))


@pytest.mark.parametrize("k,s", [((3, 2), (1, 1)), ((4, 3), (2, 3)), ((2, 5), (2, 1))])
def test_patches_match_a_loop_and_folding_is_their_adjoint(k, s):
  """extract_patches against a loop over windows; fold_patches (used by the input gradient) is
  its transpose: <extract(x), p> == <x, fold(p)>; each one's VJP is the other. The first two
  cases fold rows first, the third (columns shrink more) columns first."""
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 9, 11, 3)).astype(np.float32)
  (kh, kw), (sy, sx) = k, s
  ho, wo = (9 - kh) // sy + 1, (11 - kw) // sx + 1
  want = np.zeros((2, ho, kh, wo, kw, 3), np.float32)
  for i in range(ho):
    for j in range(wo):
      want[:, i, :, j] = x[:, i * sy:i * sy + kh, j * sx:j * sx + kw]
  got = patches.extract_patches(jnp.asarray(x), k, s)
  np.testing.assert_array_equal(got, want)
  p = rng.standard_normal(want.shape).astype(np.float32)
  folded = patches.fold_patches(jnp.asarray(p), (9, 11), s)
  np.testing.assert_allclose(np.vdot(want, p), np.vdot(x, np.asarray(folded)), rtol=1e-4)
  _, vjp = jax.vjp(lambda q: patches.fold_patches(q, (9, 11), s), jnp.asarray(p))
  np.testing.assert_array_equal(vjp(jnp.asarray(x))[0], want)
  # and extract's VJP is fold: the same sums, columns folded before rows (maybe another order), and
  # its own VJP is extract again (a gather, so exact)
  _, vjp = jax.vjp(lambda z: patches.extract_patches(z, k, s), jnp.asarray(x))
  assert_reordered_close(vjp(jnp.asarray(p))[0], folded, n=-(-kh // sy) * -(-kw // sx))
  _, vjp2 = jax.vjp(lambda q: vjp(q)[0], jnp.asarray(p))
  np.testing.assert_array_equal(vjp2(jnp.asarray(x))[0], want)


@pytest.mark.parametrize("case", CASES)
def test_transpose_matches_naive_and_is_the_adjoint(case):
  x, w, g, s = make(case)
  in_hw = x.shape[1:3]
  xt = np.asarray(ops.local_filter_transpose(g, w, in_hw, s))
  np.testing.assert_allclose(xt, naive_transpose(g, w, in_hw, s), rtol=1e-4, atol=1e-4)
  # <A x, g> == <x, A^T g>
  lhs = np.sum(np.asarray(ops.local_filter(x, w, s), np.float64) * g)
  np.testing.assert_allclose(lhs, np.sum(x * xt.astype(np.float64)), rtol=1e-4)


@pytest.mark.parametrize("case", CASES[:2])
def test_transpose_gradients_match_naive(case):
  x, w, g, s = make(case)
  r = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)
  dy, dw = jax.grad(lambda y, w: jnp.sum(r * ops.local_filter_transpose(y, w, x.shape[1:3], s)),
                    argnums=(0, 1))(g, w)
  # d<r, A^T y>/dy = A r ; d/dw = the local filter's weight gradient with x := r, g := y
  np.testing.assert_allclose(dy, naive_local(r, w, s), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dw, naive_local_grads(r, w, s, g)[1], rtol=1e-4, atol=1e-4)


def test_transpose_with_padding_crops_border():
  x, _, _, s = make(CASES[0])
  padding = ((1, 2), (2, 1))
  pads = ops.resolve_padding(padding, x.shape[1:3], (3, 4), s)
  hp, wp = x.shape[1] + 3, x.shape[2] + 3
  ho, wo = ops.output_size(hp, 3, s[0]), ops.output_size(wp, 4, s[1])
  rng = np.random.default_rng(3)
  w = rng.standard_normal((ho, wo, 3, 4, 3, 2)).astype(np.float32)
  y = rng.standard_normal((2, ho, wo, 2)).astype(np.float32)
  full = naive_transpose(y, w, (hp, wp), s)
  want = full[:, pads[0][0]:hp - pads[0][1], pads[1][0]:wp - pads[1][1]]
  np.testing.assert_allclose(ops.local_filter_transpose(y, w, x.shape[1:3], s, padding), want,
                             rtol=1e-4, atol=1e-4)


def naive_l2_pool(h, size, stride, eps):
  n, hh, ww, f = h.shape
  ho, wo = (hh - size) // stride + 1, (ww - size) // stride + 1
  out = np.zeros((n, ho, wo, f))
  for i in range(ho):
    for j in range(wo):
      win = h[:, i * stride:i * stride + size, j * stride:j * stride + size]
      out[:, i, j] = np.sqrt(eps + np.sum(win ** 2, axis=(1, 2)))
  return out


@pytest.mark.parametrize("size,stride", [(3, 1), (2, 2), (4, 3)])
def test_l2_pool_matches_naive_with_gradients(size, stride):
  h = np.random.default_rng(4).standard_normal((2, 9, 10, 3)).astype(np.float32)
  np.testing.assert_allclose(ops.l2_pool(h, size, stride, 1e-2), naive_l2_pool(h, size, stride, 1e-2),
                             rtol=1e-5, atol=1e-5)
  g = np.random.default_rng(5).standard_normal(naive_l2_pool(h, size, stride, 0).shape)
  dh = jax.grad(lambda h: jnp.sum(g * ops.l2_pool(h, size, stride, 1e-2)))(h)
  # d sqrt(eps + sum h^2) / dh = h / pooled, summed over the windows containing h
  pooled = naive_l2_pool(h, size, stride, 1e-2)
  ref = np.zeros_like(h, dtype=np.float64)
  for i in range(pooled.shape[1]):
    for j in range(pooled.shape[2]):
      sl = (slice(None), slice(i * stride, i * stride + size), slice(j * stride, j * stride + size))
      ref[sl] += h[sl] * (g[:, i, j] / pooled[:, i, j])[:, None, None, :]
  np.testing.assert_allclose(dh, ref, rtol=1e-4, atol=1e-5)


def test_l2_pool_same_padding_keeps_size():
  h = np.random.default_rng(6).standard_normal((1, 7, 8, 2)).astype(np.float32)
  out = ops.l2_pool(h, 5, 1, 1e-3, padding="SAME")
  assert out.shape == h.shape
  hp = np.pad(h, ((0, 0), (2, 2), (2, 2), (0, 0)))
  np.testing.assert_allclose(out, naive_l2_pool(hp, 5, 1, 1e-3), rtol=1e-5)


def naive_lcn(h, size, sigma=None, eps=1e-4):
  n, hh, ww, f = h.shape
  sigma = size / 4.0 if sigma is None else sigma
  r = np.arange(size) - (size - 1) / 2
  g2 = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sigma ** 2)
  lo = (size - 1) // 2

  def gmean(z):  # z[n, H, W]: Gaussian-weighted mean over the in-image part of each window
    out = np.zeros_like(z)
    for i in range(hh):
      for j in range(ww):
        acc = np.zeros(n)
        wsum = 0.0
        for p in range(size):
          for q in range(size):
            y, x = i + p - lo, j + q - lo
            if 0 <= y < hh and 0 <= x < ww:
              acc += g2[p, q] * z[:, y, x]
              wsum += g2[p, q]
        out[:, i, j] = acc / wsum
    return out

  v = h - gmean(h.mean(-1))[..., None]
  sd = np.sqrt(gmean((v ** 2).mean(-1)) + 1e-12)
  c = sd.mean(axis=(1, 2), keepdims=True)
  return v / np.maximum(np.maximum(sd, c), eps)[..., None]


@pytest.mark.parametrize("size", [5, 4])
def test_lcn_matches_naive_and_has_correct_gradients(size):
  h = np.random.default_rng(7).standard_normal((2, 8, 9, 3))
  np.testing.assert_allclose(ops.local_contrast_norm(h.astype(np.float32), size),
                             naive_lcn(h, size), rtol=1e-4, atol=1e-5)
  check_grads(lambda z: ops.local_contrast_norm(z, size), (h,), order=1, modes=("rev",),
              atol=1e-2, rtol=1e-2)


def test_lcn_output_is_locally_zero_mean():
  h = 5.0 + 3.0 * np.random.default_rng(8).standard_normal((1, 16, 16, 4)).astype(np.float32)
  y = np.asarray(ops.local_contrast_norm(h, 5))
  assert y.shape == h.shape
  assert abs(y.mean()) < 0.1 and 0.3 < y.std() < 3.0


@pytest.mark.parametrize("bad", [
    dict(x=(1, 8, 8, 3), w=(3, 3, 3, 3, 2, 4)),  # channel mismatch
    dict(x=(1, 8, 8, 3), w=(5, 5, 3, 3, 3, 4)),  # wrong number of locations
])
def test_local_filter_rejects_mismatched_weights(bad):
  with pytest.raises(ValueError, match="expected w"):
    ops.local_filter(np.zeros(bad["x"], np.float32), np.zeros(bad["w"], np.float32), (1, 1))
