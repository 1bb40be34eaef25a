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
