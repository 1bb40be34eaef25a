"""Ingestion at scale: frames/s decoded into a frame store (`lcnet.framestore`) by 1 and 2 worker
processes and by 2 local processes x 1 worker, on a synthetic corpus of short videos and stills
made with the bundled ffmpeg; and the time and peak memory of opening a store of >= 1 M frames
against the one-manifest cache that lcnet used before and against the same frames as ArrayRecord
files read by Grain's ArrayRecordDataSource.

    python -m benchmarks.ingest [--videos 1000] [--stills 200] [--corpus DIR] [--open-frames 1000000]
        [--out ingest.json]

The corpus is generated once into --corpus (default: $LCNET_CACHE/bench-corpus-V-S) and reused.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import peak_rss, write_result

CLIP = dict(size=(160, 120), frames=48)  # each video: 2 s at 24 fps of moving textured blobs


def make_corpus(root: str, videos: int, stills: int, seed: int = 0) -> str:
  """`videos` short clips (mp4) and `stills` (jpg) of random moving textures, in sub-folders of
  100 files; files already there are kept (the corpus is built once)."""
  import imageio_ffmpeg
  from PIL import Image
  rng = np.random.default_rng(seed)
  w, h = CLIP["size"]
  yy, xx = np.mgrid[:h, :w]
  for i in range(videos + stills):
    sub = os.path.join(root, f"part{i // 100:04d}")
    os.makedirs(sub, exist_ok=True)
    base = rng.integers(0, 255, (h // 8, w // 8, 3)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    if i >= videos:
      path = os.path.join(sub, f"still{i:06d}.jpg")
      if not os.path.exists(path):
        Image.fromarray(base).save(path, quality=90)
      continue
    path = os.path.join(sub, f"clip{i:06d}.mp4")
    if os.path.exists(path):
      continue
    wr = imageio_ffmpeg.write_frames(path + ".tmp.mp4", (w, h), macro_block_size=8, quality=7,
                                     output_params=["-g", "12"])
    wr.send(None)
    for t in range(CLIP["frames"]):
      blob = ((yy - cy - t) ** 2 + (xx - cx - 2 * t) ** 2 < 400)[..., None]
      wr.send(np.where(blob, 255 - base, np.roll(base, t, axis=1)))
    wr.close()
    os.replace(path + ".tmp.mp4", path)
  return root


def child(args) -> None:
  """One ingesting process (run by the local launcher, or directly): prints its JSON result."""
  from lcnet import data
  t = time.perf_counter()
  fr = data.load_frames(args.corpus, data.FrameOptions(frames_per_video=args.frames_per_video,
                                                       short_side=args.short_side, grey=False),
                        cache_dir=args.cache, progress=False,
                        process_index=int(os.environ.get("LCNET_PROCESS_ID", 0)),
                        process_count=int(os.environ.get("LCNET_NUM_PROCESSES", 1)),
                        workers=args.workers, files_per_shard=args.files_per_shard)
  print("RESULT " + json.dumps({"seconds": time.perf_counter() - t, "frames": len(fr.images),
                                "here": fr.report["decoded_here"]}), flush=True)


def ingest_run(args, processes: int, workers: int) -> dict:
  """A fresh store of the corpus by `processes` x `workers`: wall seconds and frames/s."""
  cache = tempfile.mkdtemp(prefix="lcnet_ingest_")
  cmd = [sys.executable, "-m", "benchmarks.ingest", "--child", "--corpus", args.corpus,
         "--cache", cache, "--workers", str(workers), "--frames-per-video",
         str(args.frames_per_video), "--short-side", str(args.short_side),
         "--files-per-shard", str(args.files_per_shard)]
  if processes > 1:
    cmd = [sys.executable, "-m", "lcnet.launch", "--processes", str(processes), "--", *cmd]
  try:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t
  finally:
    shutil.rmtree(cache, ignore_errors=True)
  res = [json.loads(line.split("RESULT ", 1)[1]) for line in p.stdout.splitlines() if "RESULT " in line]
  frames = res[0]["frames"]
  return {"processes": processes, "workers": workers, "wall_s": wall, "frames": frames,
          "frames_per_s": frames / wall, "files_per_process": [r["here"]["files"] for r in res]}


# ------------------------------------------------------------------------------------------------
# Opening a store of many frames, against the old one-manifest cache.


def fake_store(root: str, frames: int, per_shard: int, side: int = 8) -> None:
  """A store of `frames` side x side grey frames in shards of `per_shard`, written directly."""
  from lcnet import framestore
  os.makedirs(root, exist_ok=True)
  opts = framestore.FrameOptions(frames_per_video=1, short_side=side)
  files, chunks = [], []
  for c, start in enumerate(range(0, frames, per_shard)):
    n = min(per_shard, frames - start)
    keys = [[f"/corpus/f{start + j:08d}.jpg", 1000, 0] for j in range(n)]
    res = [{"frames": [np.full((side, side, 1), j % 251, np.uint8)], "decoded": 1, "too_small": [],
            "error": None} for j in range(n)]
    framestore._write_shard(root, framestore._shard_name(0, c), keys, res)
    files += keys
    chunks.append([start, start + n])
  plan = {"generation": 0, "files": files, "chunks": chunks}
  framestore._write_json(os.path.join(root, "plan-00000.json"), plan)
  framestore._write_index(root, [plan], opts)


def old_manifest(root: str, frames: int, side: int = 8) -> None:
  """The cache lcnet had before the store (data.py up to cd45fb3): one file of frames and a JSON
  manifest with an entry per frame."""
  os.makedirs(root, exist_ok=True)
  n = side * side
  with open(os.path.join(root, "frames.u8"), "wb") as f:
    f.write(np.zeros(frames * n, np.uint8).tobytes())
  entries = [{"file": i, "index": 0, "offset": i * n, "shape": [side, side, 1]} for i in range(frames)]
  with open(os.path.join(root, "manifest.json"), "w") as f:
    json.dump({"version": 1, "files": [f"/corpus/f{i:08d}.jpg" for i in range(frames)],
               "frames": entries, "report": {}}, f)


def array_records(root: str, frames: int, per_shard: int, side: int = 8) -> None:
  """The same frames as ArrayRecord files (the format Grain reads natively), one per shard: each
  record a frame's bytes after its shape (3 int32), as a record format must carry it."""
  from array_record.python.array_record_module import ArrayRecordWriter
  os.makedirs(root, exist_ok=True)
  head = np.asarray([side, side, 1], np.int32).tobytes()
  for c, start in enumerate(range(0, frames, per_shard)):
    w = ArrayRecordWriter(os.path.join(root, f"shard-{c:06d}.array_record"), "group_size:1")
    for j in range(start, min(start + per_shard, frames)):
      w.write(head + np.full(side * side, j % 251, np.uint8).tobytes())
    w.close()


def open_child(kind: str, root: str) -> None:
  """Open a store (`kind` "store", "manifest" or "array_record") and read 1000 random frames:
  prints seconds and the peak memory this process added."""
  import grain  # imports first: what is timed is opening the data

  from lcnet import framestore
  base = peak_rss("VmRSS")
  t = time.perf_counter()
  if kind == "store":
    images = framestore.FrameStore(root)
  elif kind == "array_record":  # Grain's source over the files, decoding a record into a frame
    src = grain.sources.ArrayRecordDataSource(sorted(
        os.path.join(root, f) for f in os.listdir(root) if f.endswith(".array_record")))

    class Frames:
      def __len__(self):
        return len(src)

      def __getitem__(self, i):
        b = src[i]
        shape = np.frombuffer(b[:12], np.int32)
        return np.frombuffer(b[12:], np.uint8).reshape(shape)
    images = Frames()
  else:  # the old data._open
    with open(os.path.join(root, "manifest.json")) as f:
      manifest = json.load(f)
    buf = np.memmap(os.path.join(root, "frames.u8"), np.uint8, "r")
    images = [buf[e["offset"]:e["offset"] + int(np.prod(e["shape"]))].reshape(e["shape"])
              for e in manifest["frames"]]
  opened = time.perf_counter() - t
  rng = np.random.default_rng(0)
  t = time.perf_counter()
  s = sum(int(images[int(i)][0, 0, 0]) for i in rng.integers(len(images), size=1000))
  read = time.perf_counter() - t
  t = time.perf_counter()  # the same frames again: what reads cost once their shards are open
  s += sum(int(images[int(i)][0, 0, 0]) for i in np.random.default_rng(0).integers(len(images), size=1000))
  warm = time.perf_counter() - t
  print("RESULT " + json.dumps({"open_s": opened, "read_1000_s": read, "read_1000_warm_s": warm,
                                "frames": len(images),
                                "peak_added_gib": peak_rss() - base, "checksum": s}), flush=True)


def open_run(kind: str, root: str, repeats: int = 3) -> dict:
  runs = []
  for _ in range(repeats):
    p = subprocess.run([sys.executable, "-m", "benchmarks.ingest", "--open-child", kind, root],
                       capture_output=True, text=True, check=True)
    runs.append(json.loads(p.stdout.split("RESULT ", 1)[1]))
  return {"kind": kind, "frames": runs[0]["frames"],
          "open_s_median": statistics.median(r["open_s"] for r in runs),
          "read_1000_s_median": statistics.median(r["read_1000_s"] for r in runs),
          "read_1000_warm_s_median": statistics.median(r["read_1000_warm_s"] for r in runs),
          "peak_added_gib_median": statistics.median(r["peak_added_gib"] for r in runs)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--videos", type=int, default=1000)
  ap.add_argument("--stills", type=int, default=200)
  ap.add_argument("--corpus", default=None)
  ap.add_argument("--frames-per-video", type=int, default=4)
  ap.add_argument("--short-side", type=int, default=96)
  ap.add_argument("--files-per-shard", type=int, default=64)
  ap.add_argument("--open-frames", type=int, default=1_000_000)
  ap.add_argument("--open-per-shard", type=int, default=1000)
  ap.add_argument("--skip-ingest", action="store_true")
  ap.add_argument("--out", default=None)
  ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--cache", default=None, help=argparse.SUPPRESS)
  ap.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
  ap.add_argument("--open-child", nargs=2, default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.open_child:
    return open_child(*args.open_child)
  if args.child:
    return child(args)
  from lcnet import data
  res = {"command": " ".join(["python -m benchmarks.ingest", *sys.argv[1:]]),
         "date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "clip": CLIP,
         "frames_per_video": args.frames_per_video, "short_side": args.short_side}
  if not args.skip_ingest:
    args.corpus = args.corpus or os.path.join(data.default_cache_dir(),
                                              f"bench-corpus-{args.videos}-{args.stills}")
    t = time.perf_counter()
    make_corpus(args.corpus, args.videos, args.stills)
    res["corpus"] = {"dir": args.corpus, "videos": args.videos, "stills": args.stills,
                     "made_s": time.perf_counter() - t}
    res["ingest"] = [ingest_run(args, p, w) for p, w in ((1, 1), (1, 2), (2, 1))]
    one = res["ingest"][0]["frames_per_s"]
    for r in res["ingest"]:
      r["speedup"] = r["frames_per_s"] / one
      print(f"{r['processes']} process(es) x {r['workers']} worker(s): {r['frames']} frames in "
            f"{r['wall_s']:.1f} s = {r['frames_per_s']:.0f} frames/s ({r['speedup']:.2f}x)")
  if args.open_frames:
    tmp = tempfile.mkdtemp(prefix="lcnet_open_")
    try:
      fake_store(os.path.join(tmp, "store"), args.open_frames, args.open_per_shard)
      old_manifest(os.path.join(tmp, "old"), args.open_frames)
      array_records(os.path.join(tmp, "ar"), args.open_frames, args.open_per_shard)
      res["open"] = [open_run("store", os.path.join(tmp, "store")),
                     open_run("manifest", os.path.join(tmp, "old")),
                     open_run("array_record", os.path.join(tmp, "ar"))]
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
    for r in res["open"]:
      print(f"open {r['kind']} of {r['frames']} frames: {r['open_s_median'] * 1e3:.1f} ms, "
            f"+{r['peak_added_gib_median'] * 1024:.0f} MiB peak, 1000 random reads "
            f"{r['read_1000_s_median'] * 1e3:.1f} ms, again {r['read_1000_warm_s_median'] * 1e3:.1f} ms")
  write_result(res, args.out)
  return res


if __name__ == "__main__":
  main()
