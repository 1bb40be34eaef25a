"""Data: package videos decode; batches are a pure function of (seed, step, process)."""
import numpy as np
import pytest

from lcnet import data


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
  got = data.read_video(path, every=2)
  assert got.shape == (3, 32, 48, 3)
  np.testing.assert_allclose(got[:, 10, 10, 0], [0, 40, 80], atol=4)


def test_package_videos_are_found_and_decode():
  paths = data.package_videos()
  assert any(p.endswith("carphone_pristine.mp4") for p in paths)
  v = data.read_video(paths[0], every=10, max_frames=3)
  assert v.shape[0] == 3 and v.shape[-1] == 3 and v.dtype == np.uint8
