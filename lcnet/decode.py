"""Decoding videos and still images into uint8 RGB frames, and shrinking them.

Videos go through the ffmpeg binary that imageio-ffmpeg ships (no system codecs needed); stills
through Pillow.
"""
from __future__ import annotations

import numpy as np

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
              ".3gp", ".ts", ".mts", ".m2ts", ".ogv", ".y4m", ".gifv")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def read_video(path: str, every: int = 1, max_frames: int | None = None) -> np.ndarray:
  """Decode a video with the ffmpeg that imageio-ffmpeg ships: uint8 RGB [T, H, W, 3]."""
  import imageio_ffmpeg
  gen = imageio_ffmpeg.read_frames(path)
  meta = next(gen)
  w, h = meta["size"]
  frames = []
  for i, buf in enumerate(gen):
    if i % every == 0:
      frames.append(np.frombuffer(buf, np.uint8).reshape(h, w, 3))
      if max_frames and len(frames) >= max_frames:
        break
  gen.close()
  if not frames:
    raise ValueError(f"{path}: no frames decoded")
  return np.stack(frames)


def sample_video(path: str, k: int, long_frames: int | None = None
                 ) -> tuple[list[np.ndarray], int]:
  """k frames spread evenly over the video's duration, uint8 RGB, and the number decoded.

  Short videos are decoded in one pass; longer ones (more than `long_frames`, default 50 k, frames)
  by one seek per sampled frame, so an hour of video costs k decodes rather than all of them
  (a seek costs about 60 ms, what a single pass spends on ~50 small frames).
  """
  import imageio_ffmpeg
  gen = imageio_ffmpeg.read_frames(path)
  meta = next(gen)
  w, h = meta["size"]
  n_est = float(meta.get("duration") or 0) * float(meta.get("fps") or 0)
  shape = (h, w, 3)
  if n_est > (50 * k if long_frames is None else long_frames):
    gen.close()
    out = []
    for j in range(k):
      t = meta["duration"] * (j + 0.5) / k
      g = imageio_ffmpeg.read_frames(path, input_params=["-ss", f"{t:.3f}"],
                                     output_params=["-frames:v", "1"])
      next(g)
      out += [np.frombuffer(b, np.uint8).reshape(shape) for b in g]
      g.close()
    return out, len(out)
  frames = [np.frombuffer(b, np.uint8).reshape(shape) for b in gen]
  gen.close()
  if not frames:
    raise ValueError("no frames decoded")
  idx = np.unique(((np.arange(k) + 0.5) * len(frames) / k).astype(int))
  return [frames[i] for i in idx], len(frames)


def read_image(path: str) -> np.ndarray:
  """A still image as uint8 RGB [H, W, 3] (first frame of an animated file)."""
  from PIL import Image
  with Image.open(path) as im:
    im.seek(0)
    return np.asarray(im.convert("RGB"))


def shrink(rgb_HxWx3: np.ndarray, short_side: int, grey: bool) -> np.ndarray:
  """uint8 [H, W, 1 or 3]: greyscale (ITU-R 601 luma) if asked, area-downscaled so the shorter
  side is `short_side` (never upscaled)."""
  from PIL import Image
  im = Image.fromarray(np.ascontiguousarray(rgb_HxWx3))
  im = im.convert("L") if grey else im
  s = short_side / min(im.size)
  if s < 1:
    im = im.resize((max(round(im.width * s), 1), max(round(im.height * s), 1)), Image.BOX)
  a = np.asarray(im)
  return a[..., None] if grey else a
