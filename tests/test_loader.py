"""lcnet.loader: the batch of step t is the data source's, whatever the number of Grain workers or
processes; a worker's error reaches the training loop; SIGTERM leaves no worker behind."""
import os
import subprocess
import sys

import numpy as np
import pytest

from lcnet import data, loader, model, train
from lcnet.framestore import ignore_stop_signals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def frames(n=5, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 255, (30 + 3 * i, 34, 1), np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
  """A frame store of generated stills (a source the workers must pickle without its maps)."""
  from PIL import Image
  root = tmp_path_factory.mktemp("stills")
  for i, f in enumerate(frames()):
    Image.fromarray(f[..., 0]).save(root / f"{i}.png")
  return data.load_frames(str(root), data.FrameOptions(short_side=30, min_side=16),
                          cache_dir=str(root / ".cache"), progress=False, workers=1).images


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_batches_are_the_sources_whatever_the_workers(store, workers):
  src = data.CropSource(store, crop=16, batch_size=8, seed=3, whiten=True)
  with loader.Loader(src, 5, 11, 0, 8, put=lambda x: x, workers=workers) as it:
    got = list(it)
  assert len(got) == 6
  for step, x in zip(range(5, 11), got):
    np.testing.assert_array_equal(x, src.examples(step, 0, 8))  # the same function: bit-equal


def test_each_process_reads_its_slice_of_the_same_global_batch(store):
  src = data.CropSource(store, crop=16, batch_size=8, seed=1)
  parts = []
  for lo, hi in ((0, 4), (4, 8)):  # two processes' examples of each step
    with loader.Loader(src, 0, 3, lo, hi, put=lambda x: x, workers=1) as it:
      parts.append(list(it))
  for step in range(3):
    np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]),
                                  src.examples(step, 0, 8))


class Failing:
  """A batch source whose step 3 fails (picklable, for workers)."""

  def __init__(self, shape):
    self.shape = shape

  def batch(self, step):
    if step == 3:
      raise RuntimeError("corrupt frame at step 3")
    return np.random.default_rng(step).standard_normal(self.shape).astype(np.float32)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_loader_error_reaches_the_training_loop(workers):
  cfg = model.preset("tiny")
  cfg = cfg.replace(train=dict(steps=6, loader_workers=workers))
  src = Failing((cfg.train.batch_size, *cfg.model.image_size, cfg.model.channels))
  with pytest.raises(Exception, match="corrupt frame at step 3") as e:
    train.fit(cfg, src)
  tb = "".join(__import__("traceback").format_exception(e.value))
  assert "in batch" in tb  # the failing function is named in what the loop sees


def signalled_while_starting(worker, *_):
  """A worker's init that SIGTERMs its process group before it ignores stop signals, as a
  signal that comes while a worker starts on a loaded machine (worker 0 only: a second signal
  would ask fit to stop at once, unsaved)."""
  import signal
  if worker == 0:
    os.killpg(os.getpgid(0), signal.SIGTERM)
  ignore_stop_signals()


@pytest.mark.parametrize("when", ["mid-run", "while the workers start"])
def test_sigterm_stops_training_and_its_workers(tmp_path, when):
  """SIGTERM to the whole process group (as Ctrl-C, Slurm and scancel send it) during training
  with 2 loader workers: mid-run, the workers leave it to fit, which checkpoints and exits
  cleanly; while the workers start (before they can ignore it, as on a loaded machine), it kills
  them and fit takes their loss for the stop it asked for: a checkpoint and a clean exit too. No
  child is left either way."""
  starting = when != "mid-run"
  script = tmp_path / "run.py"
  script.write_text(f"""
import os, signal, sys
sys.path.insert(0, {ROOT!r})
from lcnet import loader, model, train
from tests.test_loader import Slow, signalled_while_starting
if __name__ == "__main__":
  cfg = model.preset("tiny").replace(train=dict(steps=400, loader_workers=2, save_every=0, prefetch=0,
                                                log_every=1))
  if {starting!r}:
    loader.ignore_stop_signals = signalled_while_starting
  stop = lambda step, _: step == 3 and os.killpg(os.getpgid(0), signal.SIGTERM)  # mid-run
  res = train.fit(cfg, Slow((cfg.train.batch_size, *cfg.model.image_size, cfg.model.channels)),
                  workdir={str(tmp_path / "run")!r}, log=stop)
  def read(path):  # a thread or child that ended since the listing has nothing left to count
    try:
      return open(path).read()
    except FileNotFoundError:
      return ""
  kids = [read(f"/proc/{{c}}/cmdline").replace(chr(0), " ")
          for t in os.listdir("/proc/self/task")
          for c in read(f"/proc/self/task/{{t}}/children").split()]
  kids = [k for k in kids if k]
  workers = [k for k in kids if "resource_tracker" not in k]  # the tracker lives with the process
  print("STOPPED", bool(res.stopped), int(res.state.step), "WORKERS", len(workers), flush=True)
  print(kids, flush=True)
""")
  p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180,
                     cwd=ROOT, start_new_session=True)  # its own process group
  assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
  line = next(l for l in p.stdout.splitlines() if l.startswith("STOPPED"))
  _, stopped, step, _, kids = line.split()
  assert stopped == "True" and (0 if starting else 1) <= int(step) < 400 and kids == "0", line
  assert (tmp_path / "run" / "checkpoints" / step).exists()


class Slow(Failing):
  """A source slow enough that SIGTERM comes mid-run."""

  def batch(self, step):
    import time
    time.sleep(0.05)
    return np.random.default_rng(step).standard_normal(self.shape).astype(np.float32)
