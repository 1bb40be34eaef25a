"""How lcnet compiles its own functions: `jax.jit` plus the XLA options measured best per backend.

On CPUs, jaxlib's default pipeline hands small batched contractions and reductions to YNNPACK
fusions. The local op's location-batched multiply-sums (the weight gradient over a batch of 16,
the input gradient over 8 maps) run 4-5x slower there than in XLA's own loop fusions: fwd+bwd of
an untied 10x10 layer (N16 64x64x3, stride 2, 8 maps) takes 99 ms with YNNPACK and 19.5 ms
without it (BENCHMARKS.md, "The local layer by default"). Its dots, on the other hand (the
forward's location-batched matmul), run faster in YNNPACK, which also reads each block of
weights where it lies instead of copying it out of the scan: fwd+bwd 1.11-1.49x faster than
with every YNNPACK fusion off, the cpu_default train step 1.31-1.33x (BENCHMARKS.md, "The local
layer on CPU, 2026-12-01"). So every function lcnet compiles (the train step, the evaluation's
forward passes) is compiled with YNNPACK fusing dots only, on CPU; other backends get jaxlib's
defaults. A function of your own that calls `lcnet.ops` gets the same with
`lcnet.compiled.jit(fn)` (or `jax.jit(fn, compiler_options=lcnet.compiled.options())`).
"""
from __future__ import annotations

import functools

import jax

# Per backend, the options in order of preference: YNNPACK fuses dots only (XLA's own emitters
# keep the reductions and elementwise ops); a jaxlib that has YNNPACK but not that fusion type
# gets every YNNPACK fusion off, which is still 4-5x faster for the local op than its defaults.
OPTIONS = {"cpu": [{"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"},
                   {"xla_cpu_experimental_ynn_fusion_type": ""}]}


@functools.cache
def _supported(backend: str) -> dict | None:
  """The backend's first options that this jaxlib knows (one without YNNPACK knows none)."""
  for opts in OPTIONS.get(backend, []):
    try:
      jax.jit(lambda a: a + 1, compiler_options=opts).lower(1.0).compile()
      return opts
    except Exception:  # noqa: BLE001 - "No such compile option" or an unknown value: the next
      continue
  return None


def options(backend: str | None = None) -> dict | None:
  """The XLA compiler options lcnet compiles with on `backend` (default: jax's default one)."""
  return _supported(backend or jax.default_backend())


def jit(fn=None, **kwargs):
  """`jax.jit(fn, **kwargs)` with lcnet's compiler options for the default backend."""
  if fn is None:
    return functools.partial(jit, **kwargs)
  return jax.jit(fn, compiler_options=options(), **kwargs)
