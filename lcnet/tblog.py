"""TensorBoard-readable scalar logs, without TensorFlow or any other dependency.

An event file is a TFRecord stream of `Event` protocol buffers: each record is its length (uint64),
that length's masked CRC-32C, the bytes, and their masked CRC-32C. We encode the three messages we
need (Event with a file version, a scalar Summary, or a SessionLog START) by hand; `tensorboard
--logdir <workdir>` reads them. A resumed run writes a START at the resumed step, which makes
TensorBoard drop the earlier run's events from that step on (as `metrics.jsonl` is trimmed).
"""
from __future__ import annotations

import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli polynomial, reflected
    table.append(c)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  c = 0xFFFFFFFF
  for b in data:
    c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
  return c ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
  c = crc32c(data)
  return struct.pack("<I", (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the data, its masked CRC."""
  n = struct.pack("<Q", len(data))
  return n + _masked(n) + data + _masked(data)


# Protocol-buffer wire format: a key (field number << 3 | wire type), then the value.
def _varint(v: int) -> bytes:
  v &= (1 << 64) - 1  # negative int64 as two's complement
  out = bytearray()
  while True:
    b, v = v & 0x7F, v >> 7
    out.append(b | 0x80 if v else b)
    if not v:
      return bytes(out)


def _key(field: int, wire: int) -> bytes:
  return _varint(field << 3 | wire)


def _bytes_field(field: int, payload: bytes) -> bytes:
  return _key(field, 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, file_version: str | None = None,
          scalars: dict[str, float] | None = None, session_start: bool = False) -> bytes:
  """An encoded tensorboard.Event (wall_time=1 double, step=2 int64, file_version=3,
  summary=5 {value=1 {tag=1, simple_value=2 float}}, session_log=7 {status=1, START=1})."""
  out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _bytes_field(3, file_version.encode())
  if scalars:
    values = b"".join(
        _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(v)))
        for tag, v in scalars.items())
    out += _bytes_field(5, values)
  if session_start:
    out += _bytes_field(7, _key(1, 0) + _varint(1))
  return out


class Writer:
  """Appends scalar events to a new events.out.tfevents.* file in `logdir`."""

  def __init__(self, logdir: str, resumed_step: int | None = None):
    os.makedirs(logdir, exist_ok=True)
    now = time.time()  # TensorBoard reads a directory's files in name order: oldest first
    name = f"events.out.tfevents.{time.time_ns():020d}.{socket.gethostname()}.lcnet"
    self.path = os.path.join(logdir, name)
    self._f = open(self.path, "ab")
    self._f.write(record(event(now, file_version="brain.Event:2")))
    if resumed_step is not None:  # TensorBoard purges the old run's events at steps >= this
      self._f.write(record(event(now, resumed_step, session_start=True)))
    self._f.flush()

  def scalars(self, step: int, values: dict[str, float]):
    self._f.write(record(event(time.time(), step, scalars=values)))
    self._f.flush()

  def close(self):
    self._f.close()
