"""Test set-up: 8 simulated CPU devices and fast CPU compiles, before jax initialises.

A test that needs more devices than this run has (e.g. the suite run with 4 simulated devices,
as another machine might) is marked `needs_devices(n)` and skipped with the reason."""
import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)


def pytest_collection_modifyitems(config, items):
  have = jax.device_count()
  for item in items:
    mark = item.get_closest_marker("needs_devices")
    if mark and mark.args[0] > have:
      item.add_marker(pytest.mark.skip(
          reason=f"needs {mark.args[0]} devices, this run has {have} "
                 f"(XLA_FLAGS=--xla_force_host_platform_device_count={mark.args[0]})"))


@pytest.fixture(autouse=True)
def malloc_untouched(request, monkeypatch):
  """`lcnet.hostmem.keep_heap()` changes malloc for the whole process, so an experiment run inside
  the test process would change it for every later test (and slow them: test_sharded.py and
  test_halo.py took 243 / 264 s after it against 211 / 214 s without, 2026-12-03). Here it only
  records that it was asked and answers as it would; tests/test_hostmem.py checks the real one,
  each case in a fresh interpreter. The calls are in `hostmem.keep_heap.calls`."""
  if request.module.__name__.rpartition(".")[2] == "test_hostmem":
    return
  import platform

  from lcnet import hostmem

  def recorded() -> bool:
    recorded.calls += 1
    return platform.libc_ver()[0] == "glibc"
  recorded.calls = 0
  monkeypatch.setattr(hostmem, "keep_heap", recorded)
