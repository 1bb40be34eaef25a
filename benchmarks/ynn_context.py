"""Does lcnet's local layer pay for YNNPACK when other work runs between its calls?

    XLA_FLAGS= taskset -c 1 python -m benchmarks.ynn_context [--shape small_32] [--reps 15]

`make bench` once timed small_32's fwd+bwd at 4.3 ms with lcnet's compiler options (YNNPACK fuses
dots) against 0.98 ms with YNNPACK off, on jax 0.10, while a script timing only those two measured
0.72 vs 0.79 ms. This times one call of each compiled variant right after each kind of other work
(nothing, the tied conv, `conv_general_dilated_local`, a 30 ms sleep, NumPy work), interleaved, and
prints medians, so a cost of the first YNNPACK call after other work would show as a gap that
grows with what ran before.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks import local_layer as ll
from lcnet import compiled


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--shape", default="small_32", choices=sorted(ll.SHAPES))
  ap.add_argument("--reps", type=int, default=15)
  a = ap.parse_args(argv)
  dims = ll.SHAPES[a.shape]
  _, _, _, _, k, s, _ = dims
  cands, _ = ll.jax_candidates(ll.make_problem(*dims), k, s)
  variants = {"lcnet's options": compiled.options("cpu"),
              "YNNPACK off": {"xla_cpu_experimental_ynn_fusion_type": ""}}
  layer = {v: ll.compile_jax(*cands["lcnet"], o)[0] for v, o in variants.items()}
  rng = np.random.default_rng(0)
  before = {"nothing": lambda: None,
            "the tied conv": ll.compile_jax(*cands["shared_conv"], None)[0],
            "conv_general_dilated_local": ll.compile_jax(*cands["lax_local"], None)[0],
            "a 30 ms sleep": lambda: time.sleep(0.03),
            "NumPy (SVD 300x300)": lambda: np.linalg.svd(rng.random((300, 300)))}
  times = {}
  for _ in range(a.reps):
    for what, pre in before.items():
      for v, run in layer.items():
        pre() if what != "nothing" else run()  # "nothing": the layer itself ran just before
        t0 = time.perf_counter()
        run()
        times.setdefault((what, v), []).append((time.perf_counter() - t0) * 1e3)
  print(f"{a.shape} fwd+bwd, median of {a.reps - 2} (first 2 dropped), ms")
  print("| after | " + " | ".join(variants) + " |\n|---|" + "---:|" * len(variants))
  for what in before:
    print(f"| {what} | " + " | ".join(f"{statistics.median(times[what, v][2:]):.3f}"
                                      for v in variants) + " |")


if __name__ == "__main__":
  main()
