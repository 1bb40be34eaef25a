"""Le et al. (2012) on video frames: train the deep sparse autoencoder and report the losses.

Run (what `make run` does):
    python -m experiments.youtube_faces [--preset cpu_default] [--steps N] [--workdir runs/youtube_faces]

So far this trains the preset on frames of the videos that ship inside pip packages and prints the
per-layer losses; finding the face neuron is the youtube_faces issue's work.
"""
from __future__ import annotations

import argparse
import time

from lcnet import data, model, train


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="cpu_default")
  ap.add_argument("--steps", type=int, default=None)
  ap.add_argument("--workdir", default="runs/youtube_faces")
  args = ap.parse_args(argv)
  cfg = model.preset(args.preset)
  if args.steps:
    cfg = cfg.replace(train=cfg.train.__class__(**{**cfg.train.__dict__, "steps": args.steps}))
  print(cfg)
  print("parameters:", model.count_params(cfg))
  t0 = time.time()
  src = data.default_source(cfg)
  print(f"{len(src.images)} frames decoded in {time.time() - t0:.1f}s")

  def log(step, m):
    layers = " ".join(f"L{i + 1} {m[f'layer{i + 1}/recon_rel']:.3f}/{m[f'layer{i + 1}/sparsity']:.1f}"
                      for i in range(len(cfg.model.layers)) if f"layer{i + 1}/loss" in m)
    print(f"step {step:5d}  total {m['total']:10.3f}  recon_rel/sparsity {layers}  "
          f"{m['seconds']:.1f}s", flush=True)

  res = train.fit(cfg, src, workdir=args.workdir, log=log)
  print(f"done: {int(res.state.step)} steps, metrics in {args.workdir}/metrics.jsonl")


if __name__ == "__main__":
  main()
