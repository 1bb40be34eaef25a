"""Tolerances for comparing two computations that add the same terms in different orders.

Sharded vs unsharded, blocked vs unblocked, one backend tuning vs another, AVX-512 vs AVX2: the
results differ by rounding alone. For a float sum of n terms each evaluation order's error is at
most (n - 1) * u * sum|x_i| (u = eps / 2; Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., eq. 4.4), so two orders differ by at most (n - 1) * eps * sum|x_i|. A chain
of `depth` such reductions (a layer's output feeding the next layer's sums) adds their bounds.

What is compared must be smooth in the inputs (outputs, losses, gradients, SGD steps): there a
rounding difference stays a rounding difference. Not an Adam step, which divides by sqrt(v): a
coordinate whose gradient is near zero can flip its update by the whole learning rate, so two
reduction orders legitimately give different Adam steps.

`sum|x_i|` is not known per element; the tolerance uses the compared tensor's largest magnitude
as its scale (`atol = rtol * max|want|`), so an element that cancels to near zero is judged on the
size of the terms it came from, not on its own tiny value.
"""
from __future__ import annotations

import jax
import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)


def reorder_rtol(n: int, depth: int = 1, eps: float = F32_EPS) -> float:
  """Bound on the relative difference between two orders of `depth` chained n-term sums."""
  return depth * max(n - 1, 1) * eps


def assert_reordered_close(got, want, n: int, depth: int = 1, err_msg: str = ""):
  """`got` and `want` add the same terms (at most n per reduction, `depth` chained) in other
  orders: equal within the rounding bound."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  rtol = reorder_rtol(n, depth)
  scale = float(np.abs(want).max()) if want.size else 0.0
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale,
                             err_msg=f"{err_msg} (n={n}, depth={depth}, rtol={rtol:.2e})")


def assert_trees_reordered_close(got, want, n: int, depth=1):
  """`assert_reordered_close` leaf by leaf; `depth` may be a function of the leaf's path (a
  deeper layer chains more reductions)."""
  got_leaves = jax.tree_util.tree_leaves_with_path(got)
  want_leaves = jax.tree.leaves(want)
  assert len(got_leaves) == len(want_leaves), (len(got_leaves), len(want_leaves))
  for (path, a), b in zip(got_leaves, want_leaves):
    d = depth(path) if callable(depth) else depth
    assert_reordered_close(a, b, n, d, err_msg=jax.tree_util.keystr(path))


def naive_auc(scores_N, labels_N) -> float:
  """ROC AUC by its definition, pair by pair (ties count half): the reference that the
  vectorised AUCs are checked against."""
  s, y = np.asarray(scores_N), np.asarray(labels_N)
  pos, neg = s[y == 1], s[y == 0]
  return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))
