"""lcnet.distributed and lcnet.launch with real processes: 2 processes x 4 simulated CPU devices
on 127.0.0.1, collectives across the process boundary, and failures that must end the whole run
within 60 s instead of hanging."""
import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from lcnet import checkpoint, distributed, launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "_dist_worker.py")
TRAIN_WORKER = os.path.join(ROOT, "tests", "_train_worker.py")
LIMIT_S = 60  # every process must have ended this soon after a failure
PROMPT_S = 30  # a failure reported or acted on at once ends the run this soon (on 2 loaded cores:
# process start-up and the coordinator's shutdown), far below jax's 100-300 s heartbeat timeouts
CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri",
                launch.ENV_COORDINATOR, launch.ENV_NUM_PROCESSES, launch.ENV_PROCESS_ID,
                launch.ENV_LOCAL_DEVICES)


def _devices_flags(n: int) -> str:
  """This run's XLA_FLAGS (instruction set, YNNPACK, ...) with n simulated devices: a child must
  compile with the same options as its peers, or bit-identity would not hold by construction."""
  keep = [f for f in os.environ.get("XLA_FLAGS", "").split()
          if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join([*keep, f"--xla_force_host_platform_device_count={n}"])


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS}
  env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
  env.update(extra)
  return env


class Run:
  """`python -m lcnet.launch` of the worker; collects its output lines as they come."""

  def __init__(self, *worker_args, fail=None, grace=50, processes=2, worker=WORKER,
               sigint_ignored=False):
    cmd = [sys.executable, "-m", "lcnet.launch", "--processes", str(processes), "--local-devices", "4",
           "--port", str(launch.free_port()), "--grace", str(grace), "--",
           sys.executable, worker, *worker_args]
    env = _env(**({"LCNET_TEST_FAIL": fail} if fail else {}))
    self.lines: list[str] = []
    # sigint_ignored: as a launcher started in the background by a script (`cmd &`) or nohup is
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, preexec_fn=ignore,
                                 stderr=subprocess.STDOUT, text=True)
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()

  def _read(self):
    for line in self.proc.stdout:
      self.lines.append(line.rstrip("\n"))

  def wait(self, timeout=LIMIT_S + 30) -> int:
    try:
      rc = self.proc.wait(timeout=timeout)
    finally:
      if self.proc.poll() is None:
        self.proc.kill()  # its children die with it (PR_SET_PDEATHSIG)
        self.proc.wait()
    self.end = time.time()
    self.reader.join(5)
    return rc

  def wait_for(self, key: str, timeout=40) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
      for rec in self.records():
        if key in rec:
          return rec
      if self.proc.poll() is not None:
        break
      time.sleep(0.05)
    raise AssertionError(f"no {key!r} record; output:\n{self.output}")

  def records(self, proc=None) -> list[dict]:
    """The JSON lines printed by the workers ([pN] prefix stripped), of one process or all."""
    out = []
    for line in list(self.lines):
      prefix, _, rest = line.partition(" ")
      if prefix.startswith("[p") and rest.startswith("{") and (proc is None or prefix == f"[p{proc}]"):
        try:
          out.append(json.loads(rest))
        except json.JSONDecodeError:
          pass
    return out

  @property
  def output(self) -> str:
    return "\n".join(self.lines)


def test_two_processes_train_bit_identically_to_one(tmp_path):
  """2 processes x 4 devices and 1 process x 8 devices, same 2x2x2 mesh and steps: the same bits.
  By construction: the same compiled programs per device (same compiler options), and the one
  reduction that feeds the next layer (LCN's per-image scale) is added in a fixed device order
  (`halo.ordered_sum`), not by an all-reduce whose order depends on the process layout."""
  one, two = tmp_path / "one.npz", tmp_path / "two.npz"
  single = subprocess.run([sys.executable, TRAIN_WORKER, "--steps", "3", "--out", str(one)],
                          cwd=ROOT, env=_env(XLA_FLAGS=_devices_flags(8)),
                          capture_output=True, text=True, timeout=120)
  assert single.returncode == 0, single.stdout + single.stderr
  run = Run("--steps", "3", "--out", str(two), worker=TRAIN_WORKER)
  assert run.wait(120) == 0, run.output
  a, b = np.load(one), np.load(two)
  assert sorted(a) == sorted(b) and len(a) == 6
  for k in a:
    assert a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), (k, np.abs(a[k] - b[k]).max())


def test_sigterm_to_one_process_stops_both_at_one_step_and_resumes(tmp_path):
  """A preemption notice that reaches one host (SIGTERM to process 1 after step 3): jax's
  preemption service, as orbax's checkpoint manager asks it, makes both processes stop after the
  same step and commit one checkpoint there; the rerun resumes from it and ends with the
  parameters of an uninterrupted run, bit for bit (the same program on the same devices)."""
  full, cut = tmp_path / "full.npz", tmp_path / "cut.npz"
  args = ("--steps", "12", "--mesh", "1,4,2")
  run = Run(*args, "--out", str(full), "--workdir", str(tmp_path / "a"), worker=TRAIN_WORKER)
  assert run.wait(120) == 0, run.output
  run = Run(*args, "--out", str(cut), "--workdir", str(tmp_path / "b"), "--term-at", "3",
            worker=TRAIN_WORKER)
  assert run.wait(120) == checkpoint.EXIT_PREEMPTED, run.output
  stops = {r["process"]: r["stopped"] for r in run.records() if "stopped" in r}
  assert sorted(stops) == [0, 1] and len(set(stops.values())) == 1, run.output
  stop = stops[0]
  assert 4 <= stop < 12, run.output
  assert os.listdir(tmp_path / "b" / "checkpoints") == [str(stop)]
  assert not cut.exists()
  run = Run(*args, "--out", str(cut), "--workdir", str(tmp_path / "b"), worker=TRAIN_WORKER)
  assert run.wait(120) == 0, run.output
  a, b = np.load(full), np.load(cut)
  assert sorted(a) == sorted(b) and len(a) == 6
  for k in a:
    assert np.array_equal(a[k], b[k]), (k, np.abs(a[k] - b[k]).max())


def test_psum_and_halo_across_two_processes():
  run = Run("--steps", "2")
  assert run.wait() == 0, run.output
  n, tile = 8, 4
  x = np.arange(n * tile, dtype=np.float32)
  halo = x + np.concatenate([[0], x[:-1]]) + np.concatenate([x[1:], [0]])
  for p in (0, 1):
    recs = run.records(p)
    info = next(r for r in recs if "info" in r)
    assert info["info"] == [p, 2, 4, 8], run.output
    result = next(r for r in recs if "halo" in r)
    assert result["psum"] == x.sum()  # 496
    np.testing.assert_array_equal(result["halo"], halo)
    # the tile borders 3|4 (device 3 of p0, device 4 of p1) went across the process boundary
    assert result["halo"][15] == 14 + 15 + 16 and result["halo"][16] == 15 + 16 + 17
    steps = [r["psum"] for r in recs if "step" in r]
    assert steps == [x.sum(), (x + 1).sum()]
    assert {"done": True} in recs
  assert "[launch] p0 exited with status 0" in run.output


def _fails_fast(fail: str, grace=50) -> tuple[Run, int, float]:
  """Runs the worker with an injected failure; (run, exit status, seconds from failure to end)."""
  run = Run("--steps", "5", fail=fail, grace=grace)
  rc = run.wait()
  failing = next(r for r in run.records() if "failing" in r)
  latency = run.end - failing["t"]
  print(f"{fail}: exit status {rc}, everything ended {latency:.1f}s after the failure")
  return run, rc, latency


@pytest.mark.parametrize("fail", ["kill:1:1", "kill:0:1"])
def test_a_killed_process_ends_the_run(fail):
  # grace 50: the launcher does not step in, so the survivor must end by itself (jax's heartbeat
  # timeout when a non-coordinator dies; at once when the coordinator dies).
  run, rc, latency = _fails_fast(fail)
  assert rc == 128 + signal.SIGKILL, run.output  # the first failure: the killed process
  assert latency < LIMIT_S, run.output
  assert "[launch] killing" not in run.output, run.output
  survivor = 1 - int(fail.split(":")[1])
  assert f"[launch] p{survivor} exited with status 0" not in run.output, run.output
  assert {"done": True} not in run.records(), run.output


@pytest.mark.parametrize("fail", ["raise:1:1", "raise:0:1"])
def test_an_exception_ends_the_run(fail):
  run, rc, latency = _fails_fast(fail)
  assert rc == distributed.EXIT_ON_ERROR, run.output
  assert latency < PROMPT_S, run.output  # reported through the coordinator, not left to a timeout
  assert "RuntimeError: injected failure at step 1" in run.output
  assert "[launch] killing" not in run.output
  for p in (0, 1):
    assert f"[launch] p{p} exited with status 0" not in run.output, run.output


def test_launcher_kills_survivors_after_grace():
  run, rc, latency = _fails_fast("kill:1:1", grace=1)
  assert rc == 128 + signal.SIGKILL and latency < PROMPT_S, run.output
  assert "[launch] killing ['p0'] after 1.0s grace" in run.output, run.output


@pytest.mark.parametrize("sig,ignored", [(signal.SIGINT, False), (signal.SIGTERM, False),
                                         (signal.SIGINT, True)])
def test_launcher_forwards_signals(sig, ignored):
  # SIGINT: KeyboardInterrupt in the workers, also when the launcher started with SIGINT ignored
  # (the children get the default back). SIGTERM: jax takes it as a preemption notice and
  # carries on, so the launcher kills the workers after the grace period.
  run = Run("--steps", "1000", "--sleep", "0.05", grace=3, sigint_ignored=ignored)
  run.wait_for("step")
  t0 = time.time()
  run.proc.send_signal(sig)
  rc = run.wait()
  assert rc == 128 + sig, run.output
  assert run.end - t0 < PROMPT_S, run.output
  assert {"done": True} not in run.records()
  if sig == signal.SIGINT:
    assert "KeyboardInterrupt" in run.output and "[launch] killing" not in run.output, run.output


def test_single_process_is_a_no_op(monkeypatch):
  for k in CLUSTER_VARS + ("SLURM_NTASKS", "SLURM_PROCID"):
    monkeypatch.delenv(k, raising=False)
  assert distributed.initialize() is False
  assert not jax.distributed.is_initialized()


def test_single_process_device_count_and_late_call():
  # The inherited XLA_FLAGS (8 devices, from conftest) must not win over local_device_count.
  code = ("from lcnet import distributed; import jax\n"
          "assert distributed.initialize(local_device_count=3) is False\n"
          "print(distributed.process_info(), jax.distributed.is_initialized())\n"
          "try:\n"
          "  distributed.set_cpu_device_count(5)\n"
          "except RuntimeError as e:\n"
          "  print('late:', e)\n"
          "distributed.set_cpu_device_count(3)\n")  # same count after the start: fine
  env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert "(0, 1, 3, 3) False" in out.stdout, out.stdout
  assert "late: the JAX backend already started with 3 CPU devices; 5 were asked for" in out.stdout


def test_explicit_coordinator_single_process():
  port = launch.free_port()
  code = ("from lcnet import distributed; import jax\n"
          f"assert distributed.initialize('127.0.0.1:{port}', 1, 0, local_device_count=2) is True\n"
          "print(distributed.process_info(), jax.distributed.is_initialized())\n")
  out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert "(0, 1, 2, 2) True" in out.stdout, out.stdout


def test_launcher_timeout():
  cmd = [sys.executable, "-m", "lcnet.launch", "--processes", "2", "--timeout", "5", "--grace", "1", "--",
         sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
  t0 = time.time()
  out = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=30)
  assert out.returncode == 124 and time.time() - t0 < PROMPT_S, out.stdout + out.stderr
  assert "[p0] up" in out.stdout and "[p1] up" in out.stdout


def test_child_env():
  base = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1", "LCNET_LOCAL_DEVICES": "9"}
  env = launch.child_env(base, 1234, 2, 1, 4)
  assert env[launch.ENV_COORDINATOR] == "127.0.0.1:1234"
  got = (env[launch.ENV_NUM_PROCESSES], env[launch.ENV_PROCESS_ID], env[launch.ENV_LOCAL_DEVICES])
  assert got == ("2", "1", "4")
  assert env["XLA_FLAGS"] == "--xla_foo=1"
  assert launch.ENV_LOCAL_DEVICES not in launch.child_env(base, 1234, 2, 1, None)
