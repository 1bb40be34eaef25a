"""lcnet.tblog's event files (tensorboardX's writer), read back by TensorBoard's own reader."""
import numpy as np
import pytest

from lcnet import tblog

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is in the test extra: pip install -e '.[test]'")


def _scalars(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir), purge_orphaned_data=True)
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_reads_the_scalars(tmp_path):
  w = tblog.Writer(str(tmp_path))
  for step in range(5):
    w.scalars(step, {"loss": 1.0 / (step + 1), "layer1/sparsity": -step * 1e6})
  w.close()
  got = _scalars(tmp_path)
  assert [s for s, _ in got["loss"]] == list(range(5))
  np.testing.assert_allclose([v for _, v in got["loss"]], [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5], rtol=1e-6)
  np.testing.assert_allclose([v for _, v in got["layer1/sparsity"]], [-s * 1e6 for s in range(5)])


def test_a_resumed_writer_replaces_the_old_runs_later_steps(tmp_path):
  w = tblog.Writer(str(tmp_path))
  for step in range(6):
    w.scalars(step, {"loss": 100.0 + step})  # steps 3..5 were lost with the interrupted run
  w.close()
  w = tblog.Writer(str(tmp_path), resumed_step=3)
  for step in range(3, 8):
    w.scalars(step, {"loss": float(step)})
  w.close()
  assert _scalars(tmp_path)["loss"] == [(0, 100.0), (1, 101.0), (2, 102.0), (3, 3.0), (4, 4.0),
                                        (5, 5.0), (6, 6.0), (7, 7.0)]


def test_tensorboard_reads_the_images_and_histograms(tmp_path):
  rng = np.random.default_rng(0)
  w = tblog.Writer(str(tmp_path))
  w.scalars(0, {"loss": 1.0})
  filt = rng.standard_normal((12, 20))
  w.images(7, {"filters/layer1": filt, "stimulus": np.zeros((8, 8, 3))})
  v = rng.standard_normal(5000)
  w.histograms(7, {"weights/layer1": v})
  w.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0})
  acc.Reload()
  assert set(acc.Tags()["images"]) == {"filters/layer1", "stimulus"}
  im = acc.Images("filters/layer1")[0]
  assert (im.step, im.height, im.width) == (7, 12, 20)
  from io import BytesIO

  from PIL import Image
  px = np.asarray(Image.open(BytesIO(im.encoded_image_string)), np.float64)
  px = px[..., 0] if px.ndim == 3 else px
  want = (filt - filt.min()) / (filt.max() - filt.min()) * 255  # scaled to the full range
  np.testing.assert_allclose(px, want, atol=1.0)
  h = acc.Histograms("weights/layer1")[0]
  assert h.step == 7 and h.histogram_value.num == 5000
  assert h.histogram_value.min == pytest.approx(v.min()) and h.histogram_value.max == pytest.approx(v.max())
  assert h.histogram_value.sum == pytest.approx(v.sum(), abs=1e-6)
  assert sum(h.histogram_value.bucket) == 5000
