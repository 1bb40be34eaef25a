"""Data: package videos decode; batches are a pure function of (seed, step, process)."""
import warnings

import numpy as np
import pytest

from lcnet import data, decode, units


def images(n=3, size=30):
  rng = np.random.default_rng(0)
  return [rng.standard_normal((size, size + 5, 1)).astype(np.float32) for _ in range(n)]


def test_batch_is_a_pure_function_of_seed_and_step():
  a = data.CropSource(images(), 16, 8, seed=3)
  b = data.CropSource(images(), 16, 8, seed=3)
  np.testing.assert_array_equal(a.batch(5), b.batch(5))
  assert not np.array_equal(a.batch(5), a.batch(6))
  assert not np.array_equal(a.batch(5), data.CropSource(images(), 16, 8, seed=4).batch(5))
  x = a.batch(0)
  assert x.shape == (8, 16, 16, 1) and x.dtype == np.float32
  np.testing.assert_allclose(x.mean(axis=(1, 2, 3)), 0, atol=1e-5)


def test_process_slices_reassemble_the_global_batch():
  full = data.CropSource(images(), 16, 8, seed=1).batch(7)
  parts = [data.CropSource(images(), 16, 8, seed=1, process_index=i, process_count=4).batch(7)
           for i in range(4)]
  np.testing.assert_array_equal(np.concatenate(parts), full)


def test_small_images_and_empty_input_are_rejected():
  with pytest.raises(ValueError, match="smaller than the 40x40 crop"):
    data.CropSource(images(), 40, 8)
  with pytest.raises(ValueError, match="no images"):
    data.CropSource([], 16, 8)
  with pytest.raises(ValueError, match="does not divide"):
    data.CropSource(images(), 16, 6, process_count=4)


def test_generated_video_roundtrip(tmp_path):
  import imageio_ffmpeg
  path = str(tmp_path / "clip.mp4")
  frames = [np.full((32, 48, 3), 20 * i, np.uint8) for i in range(6)]
  w = imageio_ffmpeg.write_frames(path, (48, 32), macro_block_size=16)
  w.send(None)
  for f in frames:
    w.send(f)
  w.close()
  got = decode.read_video(path, every=2)
  assert got.shape == (3, 32, 48, 3)
  np.testing.assert_allclose(got[:, 10, 10, 0], [0, 40, 80], atol=4)


def test_package_videos_are_found_and_decode():
  paths = data.package_videos()
  assert any(p.endswith("carphone_pristine.mp4") for p in paths)
  v = decode.read_video(paths[0], every=10, max_frames=3)
  assert v.shape[0] == 3 and v.shape[-1] == 3 and v.dtype == np.uint8


# ------------------------------------------------------------------------------------------------
# A user's directory: generated videos, a still, a corrupt file; the cache.


def write_video(path, levels, size=(64, 48)):
  """A clip whose frame i is a flat grey of levels[i], written with the bundled ffmpeg."""
  import imageio_ffmpeg
  w = imageio_ffmpeg.write_frames(str(path), size, macro_block_size=16, quality=9)
  w.send(None)
  for v in levels:
    w.send(np.full((size[1], size[0], 3), v, np.uint8))
  w.close()


@pytest.fixture
def media(tmp_path):
  from PIL import Image
  root = tmp_path / "media"
  (root / "sub").mkdir(parents=True)
  write_video(root / "a.mp4", [10 * i for i in range(20)])
  write_video(root / "sub" / "b.avi", [200 - 10 * i for i in range(12)])
  Image.fromarray(np.full((40, 50, 3), 77, np.uint8)).save(root / "sub" / "still.png")
  (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
  (root / "notes.txt").write_text("not media")
  return root


def test_directory_frames_are_spread_out_and_bad_files_skipped(media, tmp_path):
  opts = data.FrameOptions(frames_per_video=4, short_side=24, grey=True, min_side=16)
  with pytest.warns(UserWarning, match="skipping unreadable file .*broken.mp4"):
    fr = data.load_frames(str(media), opts, cache_dir=str(tmp_path / "cache"), progress=False)
  r = fr.report
  assert r["files"] == 4 and r["frames"] == 9 and r["frames_decoded"] == 33
  assert [s["path"].endswith("broken.mp4") for s in r["skipped"]] == [True]
  levels = [float(im.mean()) for im in fr.images]
  # a.mp4: frames (k + 0.5) * 20 / 4 = 2, 7, 12, 17 of 0, 10, ..., 190; then b.avi: 1, 4, 7, 10
  np.testing.assert_allclose(levels[:4], [20, 70, 120, 170], atol=6)
  np.testing.assert_allclose(levels[4:8], [190, 160, 130, 100], atol=6)
  assert fr.images[0].shape == (24, 32, 1) and fr.images[0].dtype == np.uint8
  assert fr.images[8].shape == (24, 30, 1)  # the still, area-downscaled to a 24 px short side


def test_long_videos_are_sampled_by_seeking(media):
  frames, n = decode.sample_video(str(media / "a.mp4"), 4, long_frames=5)
  assert n == 4 and frames[0].shape == (48, 64, 3)
  assert np.all(np.diff([f.mean() for f in frames]) > 20)  # spread over the clip, in order


def test_cache_is_reused_and_rebuilt_when_options_change(media, tmp_path, monkeypatch):
  cache = tmp_path / "cache"
  opts = data.FrameOptions(frames_per_video=2, short_side=20)
  with pytest.warns(UserWarning):
    a = data.load_frames(str(media), opts, cache_dir=str(cache), progress=False)
  built = []
  real_build = data._build
  monkeypatch.setattr(data, "_build", lambda *a, **k: (built.append(1), real_build(*a, **k)))
  b = data.load_frames(str(media), opts, cache_dir=str(cache), progress=False)
  assert not built and len(b.images) == len(a.images) == 5
  assert isinstance(b.images[0].base, np.memmap) or isinstance(b.images[0], np.memmap)
  with pytest.warns(UserWarning):
    c = data.load_frames(str(media), data.FrameOptions(frames_per_video=3, short_side=20),
                         cache_dir=str(cache), progress=False)
  assert built and len(c.images) == 7
  assert len([d for d in cache.iterdir() if not d.name.startswith(".")]) == 1  # the stale one went


def test_bad_directories_fail_clearly(tmp_path, media):
  from PIL import Image
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no videos"):
    data.load_frames(str(tmp_path / "empty"), cache_dir=str(tmp_path / "c"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load_frames(str(tmp_path / "missing"), cache_dir=str(tmp_path / "c"))
  (tmp_path / "small").mkdir()
  Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "small" / "x.png")
  with pytest.warns(UserWarning, match="smaller than 16"), \
       pytest.raises(ValueError, match="no usable frames.*1 smaller than 16"):
    data.load_frames(str(tmp_path / "small"), data.FrameOptions(min_side=16),
                     cache_dir=str(tmp_path / "c"), progress=False)


def test_examples_slice_the_global_batch_and_cached_sources_are_deterministic(media, tmp_path):
  opts = data.FrameOptions(frames_per_video=4, short_side=24, min_side=16)
  srcs = []
  for _ in range(2):
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      fr = data.load_frames(str(media), opts, cache_dir=str(tmp_path / "c"), progress=False)
    srcs.append(data.CropSource(fr.images, 16, 8, seed=2))
  full = srcs[0].batch(3)
  np.testing.assert_array_equal(full, srcs[1].batch(3))
  np.testing.assert_array_equal(srcs[0].examples(3, 2, 7), full[2:7])
  assert srcs[0].examples(3, 4, 4).shape == (0, 16, 16, 1)
  with pytest.raises(ValueError, match="lo <= hi"):
    srcs[0].examples(3, 5, 9)


def _band_power(x, lo, hi):
  p = np.abs(np.fft.fft2(x)) ** 2
  f = np.sqrt(np.fft.fftfreq(x.shape[0])[:, None] ** 2 + np.fft.fftfreq(x.shape[1])[None] ** 2)
  return p[(f >= lo) & (f < hi)].mean()


def test_whitening_flattens_a_one_over_f_spectrum():
  """Natural-image-like noise (amplitude 1/f): the power of a high band over a low band goes from
  (0.075/0.25)^2 ~ 0.09 to ~1 after `whiten` (|f| exp(-(f/0.4)^4) cancels 1/f up to the cut)."""
  rng = np.random.default_rng(0)
  f = np.sqrt(np.fft.fftfreq(128)[:, None] ** 2 + np.fft.fftfreq(128)[None] ** 2)
  spec = (rng.standard_normal((128, 128)) + 1j * rng.standard_normal((128, 128))) / np.maximum(f, 1e-3)
  x = np.real(np.fft.ifft2(spec)).astype(np.float32)
  before = _band_power(x, 0.2, 0.3) / _band_power(x, 0.05, 0.1)
  w = data.whiten(x[..., None])[..., 0]
  after = _band_power(w, 0.2, 0.3) / _band_power(w, 0.05, 0.1)
  assert before < 0.15 and 0.6 < after < 1.2, (before, after)


def test_whitened_crops_match_whitened_evaluation_inputs():
  """Training crops and evaluation images go through the same preprocessing."""
  img = np.random.default_rng(1).random((20, 20, 1)).astype(np.float32)
  src = data.CropSource([img], crop=20, batch_size=2, whiten=True)
  got = src.example(3, 0)
  cands = [units.normalise(im[None], 20, 1, whiten=True)[0] for im in (img, img[:, ::-1])]
  assert any(np.allclose(got, c, atol=1e-5) for c in cands)
  assert not np.allclose(got, units.normalise(img[None], 20, 1)[0], atol=1e-2)


def _reference_example(images, crop, seed, step, index, whiten):
  """The crop stream's definition, one example at a time: its own RNG (seed, step, index) picks an
  image, a corner and a mirror flip; then (whitening and) per-crop standardisation."""
  rng = np.random.default_rng((seed, step, index))
  im = images[rng.integers(len(images))]
  y, x = rng.integers(im.shape[0] - crop + 1), rng.integers(im.shape[1] - crop + 1)
  c = im[y:y + crop, x:x + crop].astype(np.float64)
  c = c[:, ::-1] if rng.random() < 0.5 else c
  if whiten:
    c = data.whiten(c).astype(np.float64)
  c = c - c.mean()
  return c / max(c.std(), 1e-3)


@pytest.mark.parametrize("whiten", [False, True])
def test_batched_crops_equal_the_one_at_a_time_definition(whiten):
  rng = np.random.default_rng(4)
  images = [rng.random((h, w, 1)).astype(np.float32) * 255 for h, w in ((30, 41), (24, 24), (50, 33))]
  images.append(np.zeros((26, 26, 1), np.float32))  # flat: the std floor keeps it finite
  src = data.CropSource(images, crop=12, batch_size=16, seed=5, whiten=whiten)
  got = src.examples(7, 3, 16)
  want = np.stack([_reference_example(images, 12, 5, 7, i, whiten) for i in range(3, 16)])
  np.testing.assert_allclose(got, want, atol=2e-5)
  np.testing.assert_allclose(src.example(7, 9), want[6], atol=2e-5)
