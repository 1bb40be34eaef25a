"""Multi-process start-up: the one place in lcnet that calls `jax.distributed.initialize`.

Call `initialize()` first thing in a program, before any JAX computation. It reads, in order:
explicit arguments; the environment set by `python -m lcnet.launch` (LCNET_*); a cluster jax
can auto-detect (SLURM, Open MPI, Cloud TPU, ...). With none of these it is a no-op, so the
same script runs on one process unchanged.

Failures end the whole run quickly instead of looking like a hang (jax's defaults: 100-300 s):
an uncaught exception in any process ends every process within about a second; a process that
dies silently (SIGKILL, OOM) is noticed after `heartbeat_timeout_s`. The price of a short
`shutdown_timeout_s`: a process that finishes cleanly waits at most that long for the others,
then the run is aborted, so processes must finish within that time of one another; and
`sys.exit(n)` (no exception seen) while peers wait for this process ends only then.
"""
from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time

import jax

from lcnet import _jax_private
from lcnet.launch import ENV_COORDINATOR, ENV_LOCAL_DEVICES, ENV_NUM_PROCESSES, ENV_PROCESS_ID

EXIT_ON_ERROR = 1  # exit status of a process ended by an uncaught exception


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_count: int | None = None,
               heartbeat_timeout_s: int = 20, shutdown_timeout_s: int = 30,
               init_timeout_s: int = 60, cluster: str | None = None,
               exit_on_error: bool = True) -> bool:
  """Starts jax.distributed if this is a multi-process run; True if it did.

  `local_device_count` sets the number of simulated CPU devices of this process (CPU only;
  ignored by GPU/TPU backends). `coordinator_address` is also the address the coordinator binds,
  so "127.0.0.1:PORT" listens on loopback only. `cluster` names a jax cluster_detection_method
  ("slurm", "ompi", "k8s", "mpi4py", ...) to use instead of guessing.
  """
  env = os.environ
  if coordinator_address is None and env.get(ENV_COORDINATOR):
    coordinator_address = env[ENV_COORDINATOR]
    num_processes = int(env[ENV_NUM_PROCESSES]) if num_processes is None else num_processes
    process_id = int(env[ENV_PROCESS_ID]) if process_id is None else process_id
  if local_device_count is None and env.get(ENV_LOCAL_DEVICES):
    local_device_count = int(env[ENV_LOCAL_DEVICES])
  if local_device_count is not None:
    set_cpu_device_count(local_device_count)

  timeouts = dict(initialization_timeout=init_timeout_s, heartbeat_timeout_seconds=heartbeat_timeout_s,
                  shutdown_timeout_seconds=shutdown_timeout_s)
  if coordinator_address is not None:
    if num_processes is None or process_id is None:
      raise ValueError(f"coordinator_address={coordinator_address!r} needs num_processes and "
                       f"process_id (got {num_processes}, {process_id})")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               coordinator_bind_address=coordinator_address,
                               cluster_detection_method="deactivate", **timeouts)
  elif cluster is not None or _cluster_detected():
    jax.distributed.initialize(cluster_detection_method=cluster, **timeouts)
  else:
    return False
  if exit_on_error:
    _install_fail_fast()
  return True


def process_info() -> tuple[int, int, int, int]:
  """(process_index, process_count, local_device_count, global device count)."""
  return jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count()


def set_cpu_device_count(n: int) -> None:
  """Simulate n CPU devices in this process; must run before the backend starts."""
  if _jax_private.backends_started():
    if _jax_private.cpu_backend_started() and jax.local_device_count("cpu") != n:
      raise RuntimeError(f"the JAX backend already started with {jax.local_device_count('cpu')} CPU "
                         f"devices; {n} were asked for. Call lcnet.distributed.initialize() before "
                         "any JAX computation (and before jax.devices()).")
    return
  jax.config.update("jax_num_cpu_devices", n)


def _cluster_detected() -> bool:
  """A cluster jax configures itself: SLURM (srun), Open MPI, Cloud TPU, JAX_COORDINATOR_ADDRESS.

  Kubernetes and mpi4py are not guessed (a pod is not a job): pass `cluster="k8s"` / "mpi4py".
  """
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS") or _jax_private.cluster_env_present())


# Fail fast. A failing process must not wait in jax's shutdown barrier while its peers wait for
# it in a collective (that ends only at shutdown_timeout). It reports the failure under
# _ABORT_KEY and exits at once; process 0 watches that key and exits too, and the death of the
# coordinator ends every other process within ~0.1 s. A process that dies without a word
# (SIGKILL, OOM) is noticed by the heartbeat timeout instead.
_ABORT_KEY = "lcnet/abort"
_CLEAN_EXIT = "clean exit of process 0"
_stop_watching = threading.Event()


def _install_fail_fast() -> None:
  previous = sys.excepthook

  def excepthook(exc_type, exc, tb) -> None:
    try:
      previous(exc_type, exc, tb)
    finally:
      status = 130 if issubclass(exc_type, KeyboardInterrupt) else EXIT_ON_ERROR
      _report_and_exit(status, f"uncaught {exc_type.__name__}: {exc}")

  sys.excepthook = excepthook
  if _jax_private.process_id() == 0:
    watcher = threading.Thread(target=_watch, args=(_jax_private.coordination_client(),),
                               name="lcnet-watch", daemon=True)
    watcher.start()
    atexit.register(_stop_watch, watcher)  # runs before jax's own atexit shutdown


def _report_and_exit(status: int, why: str) -> None:
  """Tell process 0 (so that every process ends now), then exit without jax's shutdown barrier."""
  msg = f"process {_jax_private.process_id()} failed: {why}"
  print(f"lcnet.distributed: {msg}; exiting with status {status}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  t = threading.Thread(target=_set_abort, args=(msg,), daemon=True)
  t.start()
  t.join(2.0)  # bounded: the coordinator may already be gone
  os._exit(status)


def _set_abort(msg: str) -> None:
  try:
    _jax_private.coordination_client().key_value_set(_ABORT_KEY, msg)
  except Exception:  # already set by another failure, or no coordinator: nothing more to tell
    pass


def _watch(client) -> None:
  """Process 0: exit when any process reports a failure."""
  while not _stop_watching.is_set() and _jax_private.coordination_client() is client:
    try:
      msg = client.blocking_key_value_get(_ABORT_KEY, 1000)
    except Exception:  # timed out: look again
      time.sleep(0.01)
      continue
    if msg != _CLEAN_EXIT:
      print(f"lcnet.distributed: {msg}; process 0 exiting with status {EXIT_ON_ERROR}",
            file=sys.stderr, flush=True)
      os._exit(EXIT_ON_ERROR)
    return


def _stop_watch(watcher: threading.Thread) -> None:
  _stop_watching.set()
  _set_abort(_CLEAN_EXIT)
  watcher.join(3.0)


class _Stdout(logging.StreamHandler):
  """A handler that writes to whatever sys.stdout is now (notebooks and tests replace it)."""

  @property
  def stream(self):
    return sys.stdout

  @stream.setter
  def stream(self, _):
    pass


def configure_logging(name: str = "lcnet") -> logging.Logger:
  """The `name` logger prints INFO and above on process 0 only (plain messages on stdout); other
  processes show only warnings and errors, prefixed with their index. Call after `initialize()`."""
  logger = logging.getLogger(name)
  for h in [h for h in logger.handlers if isinstance(h, _Stdout)]:
    logger.removeHandler(h)
  handler = _Stdout()
  me = jax.process_index()
  handler.setFormatter(logging.Formatter("%(message)s" if me == 0 else f"[{me}] %(levelname)s %(message)s"))
  logger.addHandler(handler)
  logger.setLevel(logging.INFO if me == 0 else logging.WARNING)
  logger.propagate = False
  return logger
