"""lcnet.hostmem: with the heap kept, a compiled call stops faulting its temporaries in.

mallopt is process-wide, so each case runs in a fresh interpreter: a function of a 64 MiB
matrix whose temporaries are 64 MiB or more (XLA:CPU materialises the transpose) is called 15
times after 10 warm-up calls, counting the process's minor page faults in each call. The
reference is the buffer's size: without the setting a call faults at least its 16,384 pages in
again; with it, the median call none. (On a busy machine a call's temporaries can be freed
after the next call has allocated its own, so the kept heap still grows now and then: those
calls fault once, which is why the median is compared.)
"""
import json
import os
import platform
import subprocess
import sys

import pytest

from lcnet import hostmem

PAGES = 64 * 2**20 // 4096  # the temporary's 4 KiB pages

SCRIPT = r"""
import json, resource, statistics, sys
from lcnet import hostmem
kept = hostmem.keep_heap() if sys.argv[1] == "keep" else None
import jax, jax.numpy as jnp
f = jax.jit(lambda x: (x.T * 2.0 + x).sum())
x = jnp.ones((4096, 4096), jnp.float32)
for _ in range(10):
  f(x).block_until_ready()
faults = []
for _ in range(15):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults_per_call": statistics.median(faults)}))
"""


def faults_per_call(mode: str) -> dict:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}  # one device is enough
  out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True,
                       text=True, timeout=300, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def thp_always() -> bool:
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return "[always]" in f.read()
  except OSError:
    return False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_heap_stops_the_per_call_page_faults():
  kept = faults_per_call("keep")
  assert kept["kept"] is True
  assert kept["faults_per_call"] < 0.05 * PAGES, kept
  if not thp_always():  # with huge pages always on, an mmap'd block faults in 2 MiB at a time
    default = faults_per_call("default")
    assert default["faults_per_call"] > 0.5 * PAGES, default  # what keep_heap() removes


def test_keep_heap_changes_nothing_without_glibc(monkeypatch):
  monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("musl", "1.2"))
  hostmem.keep_heap.cache_clear()
  try:
    assert hostmem.keep_heap() is False
  finally:
    hostmem.keep_heap.cache_clear()
