"""Local multi-process launcher: N copies of a command on 127.0.0.1, one jax process each.

  python -m lcnet.launch --processes 2 --local-devices 4 -- python -m some.module args...

Each child gets LCNET_COORDINATOR=127.0.0.1:PORT, LCNET_NUM_PROCESSES, LCNET_PROCESS_ID and
LCNET_LOCAL_DEVICES (read by `lcnet.distributed.initialize`); its output lines are prefixed
`[p0] `, `[p1] `, .... When a child fails, the others get `--grace` seconds to end by themselves,
then are killed. SIGINT/SIGTERM to the launcher are forwarded to the children, which are killed
if they are still there `--grace` seconds later (jax takes SIGTERM as a preemption notice and
does not exit), or at once on a second signal. The exit status is 128+N if the launcher got
signal N, else that of the first child to fail (128+N if signal N ended it), else 0.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

HOST = "127.0.0.1"  # the only address the launcher uses
# The environment of each child, read by lcnet.distributed.initialize (this module imports no jax).
ENV_COORDINATOR = "LCNET_COORDINATOR"      # "127.0.0.1:PORT"
ENV_NUM_PROCESSES = "LCNET_NUM_PROCESSES"
ENV_PROCESS_ID = "LCNET_PROCESS_ID"
ENV_LOCAL_DEVICES = "LCNET_LOCAL_DEVICES"  # simulated CPU devices per process


def free_port() -> int:
  """A TCP port on 127.0.0.1 that was free a moment ago."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((HOST, 0))
    return s.getsockname()[1]


def child_env(base: dict, port: int, n: int, i: int, local_devices: int | None) -> dict:
  """The environment of child i of n."""
  env = dict(base, PYTHONUNBUFFERED="1")
  env[ENV_COORDINATOR] = f"{HOST}:{port}"
  env[ENV_NUM_PROCESSES] = str(n)
  env[ENV_PROCESS_ID] = str(i)
  env.pop(ENV_LOCAL_DEVICES, None)
  if local_devices is not None:
    env[ENV_LOCAL_DEVICES] = str(local_devices)
    # An inherited --xla_force_host_platform_device_count would be a second, conflicting count.
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
  return env


def _child_preexec():
  """A preexec_fn: the child starts with SIGINT and SIGTERM at their default dispositions (a
  launcher started in the background, e.g. by `nohup` or `cmd &` in a script, inherits SIGINT
  ignored, and then forwarding it would do nothing) and, on Linux, gets SIGKILL if the launcher
  dies, so nothing is orphaned."""
  prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None  # looked up here:
  # the child between fork and exec must not import

  def preexec():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if prctl is not None:
      prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
  return preexec


def exit_status(returncode: int) -> int:
  """Popen returncode -> shell-style exit status (signal N -> 128+N)."""
  return 128 - returncode if returncode < 0 else returncode


class _Prefixer(threading.Thread):
  """Copies a child's output to our stdout, one whole line at a time, behind a prefix."""

  def __init__(self, stream, prefix: bytes, lock: threading.RLock):
    super().__init__(daemon=True)
    self.stream, self.prefix, self.lock = stream, prefix, lock

  def run(self) -> None:
    out = sys.stdout.buffer
    for line in iter(self.stream.readline, b""):
      if not line.endswith(b"\n"):
        line += b"\n"
      with self.lock:
        out.write(self.prefix + line)
        out.flush()


def log(msg: str, lock: threading.RLock) -> None:
  with lock:
    sys.stdout.write(f"[launch] {msg}\n")
    sys.stdout.flush()


def run(cmd: Sequence[str], processes: int, local_devices: int | None = None,
        port: int | None = None, timeout: float | None = None, grace: float = 10.0) -> int:
  """Runs `processes` copies of cmd until all end; returns the exit status (see the module doc)."""
  port = port or free_port()
  lock = threading.RLock()  # re-entrant: the signal handler logs too, from the main thread
  log(f"{processes} processes, coordinator {HOST}:{port}: {' '.join(cmd)}", lock)
  t0 = time.monotonic()
  children, readers = [], []
  child_preexec = _child_preexec()
  for i in range(processes):
    # Own process group: a terminal's Ctrl-C reaches the launcher only, which forwards it.
    p = subprocess.Popen(list(cmd), env=child_env(os.environ, port, processes, i, local_devices),
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         start_new_session=True,
                         preexec_fn=child_preexec)
    children.append(p)
    readers.append(_Prefixer(p.stdout, f"[p{i}] ".encode(), lock))
    readers[-1].start()

  def signal_all(sig: int) -> None:
    for p in children:
      if p.poll() is None:
        try:
          os.killpg(p.pid, sig)
        except ProcessLookupError:
          pass

  got_signal: list[int] = []

  def forward(sig, frame) -> None:
    got_signal.append(sig)
    if len(got_signal) == 1:
      log(f"got signal {sig}; forwarding it to the children", lock)
      signal_all(sig)
    else:
      log(f"got signal {sig} again; killing the children", lock)
      signal_all(signal.SIGKILL)

  old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
  status, deadline, killed = 0, None, False
  try:
    done: set[int] = set()
    while len(done) < processes:
      for i, p in enumerate(children):
        if i not in done and p.poll() is not None:
          done.add(i)
          code = exit_status(p.returncode)
          log(f"p{i} exited with status {code} after {time.monotonic() - t0:.1f}s", lock)
          if code != 0 and status == 0:
            status = code
            deadline = time.monotonic() + grace
      now = time.monotonic()
      if got_signal and deadline is None:
        deadline = now + grace
      if timeout is not None and deadline is None and now - t0 > timeout:
        log(f"timeout ({timeout}s): stopping the children", lock)
        status = status or 124
        signal_all(signal.SIGTERM)
        deadline = now + grace
      if deadline is not None and now > deadline and not killed and len(done) < processes:
        log(f"killing {[f'p{i}' for i in range(processes) if i not in done]} after {grace}s grace", lock)
        signal_all(signal.SIGKILL)
        killed = True
      time.sleep(0.05)
  finally:
    signal_all(signal.SIGKILL)  # only reached early on an error in the launcher itself
    for s, h in old.items():
      signal.signal(s, h)
  for r in readers:
    r.join(timeout=5)
  if got_signal:
    status = 128 + got_signal[0]
  log(f"done in {time.monotonic() - t0:.1f}s, exit status {status}", lock)
  return status


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  split = argv.index("--") if "--" in argv else len(argv)
  parser = argparse.ArgumentParser(prog="python -m lcnet.launch",
                                   usage="%(prog)s [options] -- command args...",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--processes", type=int, required=True)
  parser.add_argument("--local-devices", type=int, default=None,
                      help="simulated CPU devices per process")
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
  parser.add_argument("--timeout", type=float, default=None,
                      help="stop the whole run after this many seconds (exit status 124)")
  parser.add_argument("--grace", type=float, default=10.0,
                      help="seconds the others get to end by themselves after a failure")
  args = parser.parse_args(argv[:split])
  cmd = argv[split + 1:]
  if not cmd or args.processes < 1:
    parser.error("need a command after -- and --processes >= 1")
  return run(cmd, args.processes, args.local_devices, args.port, args.timeout, args.grace)


if __name__ == "__main__":
  sys.exit(main())
