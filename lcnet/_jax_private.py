"""The private jax internals lcnet needs, in one place (jax 0.10.x and 0.12.x, both tested).

Each has no public equivalent in those versions: `jax.extend.backend.backends()` starts the
backends that `backends_started` must only look at; jax detects Slurm / Open MPI / Cloud TPU but
does not say whether it would; the coordination client (key-value store) and the preemption
service are not exposed. Nothing else in lcnet imports `jax._src`. `tests/test_jax_private.py`
exercises every function here, so a jax upgrade that moves one fails there with its name.
"""
from __future__ import annotations

from jax._src import cloud_tpu_init, clusters, xla_bridge
from jax._src import distributed as _distributed


def backends_started() -> bool:
  """Whether jax's backends exist (then the CPU device count can no longer change)."""
  return xla_bridge.backends_are_initialized()


def cpu_backend_started() -> bool:
  return backends_started() and "cpu" in xla_bridge.backends()


def cluster_env_present() -> bool:
  """A cluster that `jax.distributed.initialize()` configures by itself: Slurm, Open MPI, a
  Cloud TPU VM."""
  return bool(cloud_tpu_init.running_in_cloud_tpu_vm or clusters.SlurmCluster.is_env_present()
              or clusters.OmpiCluster.is_env_present())


def coordination_client():
  """The coordination service's client (key-value store), None before jax.distributed starts."""
  return _distributed.global_state.client


def process_id() -> int:
  """This process's id in jax.distributed (0 before it starts); does not start the backend."""
  return _distributed.global_state.process_id


def preemption_service_running() -> bool:
  return _distributed.global_state.preemption_sync_manager is not None
