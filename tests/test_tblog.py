"""TensorBoard event files written without TensorFlow, read back by TensorBoard's own reader."""
import struct

import numpy as np
import pytest

from lcnet import tblog

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is in the test extra: pip install -e '.[test]'")


def test_crc32c_check_value():
  # The CRC-32C (Castagnoli) check value from its specification (RFC 3720, B.4).
  assert tblog.crc32c(b"123456789") == 0xE3069283
  assert tblog.crc32c(b"") == 0


def test_record_framing():
  r = tblog.record(b"abc")
  assert struct.unpack("<Q", r[:8])[0] == 3 and r[12:15] == b"abc" and len(r) == 8 + 4 + 3 + 4


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
