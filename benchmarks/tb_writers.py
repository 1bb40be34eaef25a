"""What a TensorBoard writer costs per training step: the 8 scalars a cpu_default step logs,
through lcnet.tblog (tensorboardX's FileWriter, one event per step), tensorboardX's SummaryWriter
(one event per scalar), tensorboard's own EventFileWriter (and, with --old FILE, lcnet's former
hand-written encoder), each into its own directory, round-robin in one run.

    python -m benchmarks.tb_writers [--steps 2000] [--old /path/to/old/tblog.py] [--out tb.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time

from benchmarks.common import write_result

TAGS = ["total", "layer1/recon", "layer1/sparsity", "layer2/recon", "layer2/sparsity",
        "layer3/recon", "layer3/sparsity", "input_wait"]


def lcnet_tblog(logdir):
  from lcnet import tblog
  w = tblog.Writer(logdir)
  return w.scalars, w.close


def tensorboardx(logdir):
  from tensorboardX import SummaryWriter
  w = SummaryWriter(logdir)

  def step(i, values):
    for k, v in values.items():
      w.add_scalar(k, v, i)
  return step, w.close


def tensorboard_writer(logdir):
  from tensorboard.compat.proto import event_pb2, summary_pb2
  from tensorboard.summary.writer.event_file_writer import EventFileWriter
  w = EventFileWriter(logdir)

  def step(i, values):
    s = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v)
                                   for k, v in values.items()])
    w.add_event(event_pb2.Event(wall_time=time.time(), step=i, summary=s))
  return step, w.close


def hand_encoder(path):
  spec = importlib.util.spec_from_file_location("old_tblog", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)

  def make(logdir):
    w = mod.Writer(logdir)
    return w.scalars, w.close
  return make


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--steps", type=int, default=2000)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--old", default=None)
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  writers = {"lcnet.tblog": lcnet_tblog, "tensorboardX": tensorboardx,
             "tensorboard": tensorboard_writer}
  if args.old:
    writers["hand_encoder"] = hand_encoder(args.old)
  times = {k: [] for k in writers}
  for _ in range(args.repeats):  # round-robin: the machine's noise falls on every writer alike
    for name, make in writers.items():
      with tempfile.TemporaryDirectory() as d:
        step, close = make(d)
        t = time.perf_counter()
        for i in range(args.steps):
          step(i, {k: float(i) / (j + 1) for j, k in enumerate(TAGS)})
        close()  # flushed to disk: the whole cost
        times[name].append((time.perf_counter() - t) / args.steps * 1e6)
  res = {"command": " ".join(["python -m benchmarks.tb_writers", *sys.argv[1:]]),
         "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "scalars_per_step": len(TAGS),
         "us_per_step_median": {k: statistics.median(v) for k, v in times.items()}, "runs_us": times}
  for k, v in res["us_per_step_median"].items():
    print(f"{k:14s} {v:8.1f} us per step ({len(TAGS)} scalars)")
  write_result(res, args.out)


if __name__ == "__main__":
  main()
