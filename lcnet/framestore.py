"""The frame store: frames of many videos and stills, decoded once by every host together, kept in
shards that every host reads from a shared filesystem.

A store is a directory:
  plan-GGGGG.json          one ingestion generation: its files, cut into chunks of
                           `files_per_shard` (written before any decoding, so a rerun resumes the
                           same chunks)
  shard-GGGGG-CCCCCC.u8    the frames of one chunk, uint8, back to back
  shard-GGGGG-CCCCCC.npy   their table, int64 [frames, 4]: byte offset, height, width, channels
  shard-GGGGG-CCCCCC.json  the chunk's files, skipped files, too-small frames (the commit marker:
                           written last, atomically)
  index.json               every shard's name and frame count, in order, and the skipped files:
                           opening costs time and memory in the number of shards, not of frames

Process 0 makes the plans and, with jax.distributed running, the others take them from it (their
own listing of the folder may differ if it changes meanwhile). Chunk c of a plan is decoded by
process c % process_count, on each host by a pool of worker
processes (one file per task); a shard's bytes depend only on its chunk's files and the options,
so the store is the same whatever the number of processes and workers, and whether or not an
ingestion was interrupted. Files added to the folder later form a new generation; a file changed
or removed makes a new store.

Why raw uint8 shards with a NumPy table (not ArrayRecord or TFRecord): a frame is read by
memory-mapping, with no deserialising or copy: a store of 1 M frames in 1,000 shards opens
(every shard mapped) in 146 ms, and a random frame costs 2-9 us against 12-95 us from ArrayRecord
files of the same frames (BENCHMARKS.md, "Frame store, ingestion and the loader").
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from lcnet.decode import IMAGE_EXTS, read_image, sample_video, shrink

VERSION = 2
log = logging.getLogger("lcnet.data")


@dataclasses.dataclass(frozen=True)
class FrameOptions:
  """How frames are sampled and stored; any change gives a new store."""
  frames_per_video: int = 8  # spread evenly over each video's duration
  short_side: int = 96  # frames are area-downscaled to this shorter side (never upscaled)
  grey: bool = True  # greyscale (1 channel) or RGB (3)
  min_side: int = 1  # frames whose shorter side ends up below this (the crop) are left out


def file_key(path: str) -> list:
  """What identifies a file's contents for the store: absolute path, size, whole-second mtime."""
  return [os.path.abspath(path), os.path.getsize(path), int(os.path.getmtime(path))]


def options_key(opts: FrameOptions) -> str:
  return hashlib.sha256(json.dumps([VERSION, dataclasses.asdict(opts)]).encode()).hexdigest()[:16]


def _write_atomically(path: str, write) -> None:
  """write(tmp_path), then rename onto path: readers see the whole file or none."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  os.close(fd)
  try:
    write(tmp)
    with open(tmp, "rb+") as f:  # on disk before the rename: a crash cannot commit a short file
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _write_json(path: str, obj) -> None:
  def w(tmp):
    with open(tmp, "w") as f:
      json.dump(obj, f)
  _write_atomically(path, w)


def _create_json(path: str, obj) -> None:
  """Write path only if it does not exist yet, atomically (a hard link fails if it exists)."""
  tmp = path + f".tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f)
    f.flush()
    os.fsync(f.fileno())
  try:
    os.link(tmp, path)
  except FileExistsError:
    pass
  finally:
    os.remove(tmp)


# ------------------------------------------------------------------------------------------------
# Decoding one file (in a worker process).


def decode_file(path: str, opts: FrameOptions) -> dict:
  """One file's frames, shrunk: {"frames": [uint8 HxWxC], "decoded", "too_small": [shape],
  "error": None or the decoder's last message line}."""
  try:
    if path.lower().endswith(IMAGE_EXTS):
      rgbs, n = [read_image(path)], 1
    else:
      rgbs, n = sample_video(path, opts.frames_per_video)
  except Exception as e:  # noqa: BLE001 - any decoder failure means "skip this file"
    msg = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
    return {"frames": [], "decoded": 0, "too_small": [], "error": msg}
  frames, too_small = [], []
  for rgb in rgbs:
    a = shrink(rgb, opts.short_side, opts.grey)
    if min(a.shape[:2]) < opts.min_side:
      too_small.append(list(rgb.shape[:2]))
    else:
      frames.append(a)
  return {"frames": frames, "decoded": n, "too_small": too_small, "error": None}


def _pool(workers: int):
  """Worker processes started by spawn (JAX's threads may run in this process, so no fork), or
  None where spawn cannot start them: a spawned worker re-runs the main script, which a program
  read from stdin does not have (notebooks, `python -c` and `python -m` are fine)."""
  import sys
  main = getattr(sys.modules.get("__main__"), "__file__", None)
  if main and not os.path.isfile(main):
    log.info("decoding in this process: the main program (%s) is not a file that workers could "
             "import", main)
    return None
  return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=ignore_stop_signals)


def ignore_stop_signals(*_) -> None:
  """In a worker process: SIGINT and SIGTERM sent to the whole process group (Ctrl-C, Slurm,
  scancel) are the parent's to handle; it stops its workers itself."""
  import signal
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)


def default_workers() -> int:
  """One per core this process may run on (its CPU affinity, as Slurm and taskset set it)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------
# Ingestion.


def _shard_name(gen: int, chunk: int) -> str:
  return f"shard-{gen:05d}-{chunk:06d}"


def _plans(root: str) -> list[str]:
  return sorted(f for f in os.listdir(root) if f.startswith("plan-") and f.endswith(".json"))


def _load(path: str):
  with open(path) as f:
    return json.load(f)


def _committed(root: str, plan: dict) -> list[bool]:
  return [os.path.exists(os.path.join(root, _shard_name(plan["generation"], c) + ".json"))
          for c in range(len(plan["chunks"]))]


def _write_shard(root: str, name: str, files: Sequence[list], results: Sequence[dict]) -> None:
  """The shard's frames, table, then its json (the commit marker), each renamed into place."""
  table, offset = [], 0
  frames = [a for r in results for a in r["frames"]]
  for a in frames:
    table.append([offset, *a.shape])
    offset += a.size

  def write_u8(tmp):
    with open(tmp, "wb") as f:
      for a in frames:
        f.write(np.ascontiguousarray(a).tobytes())

  def write_table(tmp):
    with open(tmp, "wb") as f:
      np.save(f, np.asarray(table, np.int64).reshape(-1, 4))

  _write_atomically(os.path.join(root, name + ".u8"), write_u8)
  _write_atomically(os.path.join(root, name + ".npy"), write_table)
  hw = np.asarray(table, np.int64).reshape(-1, 4)[:, 1:3]
  _write_json(os.path.join(root, name + ".json"), {
      "files": list(files), "frames": len(frames), "bytes": offset,
      "min_side": int(hw.min()) if len(hw) else None,
      "decoded": sum(r["decoded"] for r in results),
      "skipped": [{"path": k[0], "error": r["error"]} for k, r in zip(files, results) if r["error"]],
      "too_small": [{"path": k[0], "shape": s} for k, r in zip(files, results)
                    for s in r["too_small"]]})


def ingest(files: Sequence[str], opts: FrameOptions, root: str, process_index: int = 0,
           process_count: int = 1, workers: int | None = None, files_per_shard: int = 64,
           wait_s: float = 24 * 3600, progress: bool = False) -> dict:
  """Decode `files` into the store at `root` (created), this process' share of the chunks on
  `workers` worker processes (default: one per core); then wait for the other processes' shards
  and write the index. Files already in the store are not decoded again; a file changed or
  removed since is an error (the caller makes a new store). Returns this call's work: {"files",
  "frames", "decoded", "seconds"}."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in 0..{process_count - 1}")
  os.makedirs(root, exist_ok=True)
  client = _coordination_client() if process_count > 1 else None
  if client is None:  # one process, or several without jax.distributed: each plans from its scan
    plans, new = _plan(files, root, files_per_shard)
  elif process_index != _process_id():
    raise ValueError(f"ingest: process_index {process_index} is not this process' index in "
                     f"jax.distributed ({_process_id()}); pass jax.process_index()")
  elif process_index == 0:  # process 0 plans alone and tells the others how many plans it made
    key = _agreement_key(root)
    try:
      plans, new = _plan(files, root, files_per_shard)
    except Exception as e:
      client.key_value_set(key, json.dumps({"error": f"{type(e).__name__}: {e}"}))
      raise
    client.key_value_set(key, json.dumps({"plans": len(plans)}))
  else:  # the others take process 0's plans, whatever their own scan of the folder found
    plans, new = _plans_of_process_0(client, _agreement_key(root), files, root, wait_s)
  work = {"files": 0, "frames": 0, "decoded": 0, "seconds": 0.0}
  t0 = time.perf_counter()
  todo = [(p, c) for p in plans for c, done in enumerate(_committed(root, p))
          if not done and c % process_count == process_index]
  if todo:
    n_files = sum(b - a for p, c in todo for a, b in [p["chunks"][c]])
    workers = min(workers or default_workers(), n_files)  # no more workers than files
    from tqdm import tqdm
    bar = tqdm(total=n_files, desc="decoding frames", unit="file", disable=not progress)
    pool = _pool(workers) if workers > 1 and n_files > 1 else None
    try:
      for p, c in todo:
        a, b = p["chunks"][c]
        fk = p["files"][a:b]
        paths = [k[0] for k in fk]
        results = []
        try:  # a worker that died breaks the pool: the next map's submit raises, as does a result
          it = pool.map(decode_file, paths, [opts] * len(paths)) if pool else (
              decode_file(q, opts) for q in paths)
          for r in it:
            results.append(r)
            bar.update(1)
        except BrokenProcessPool as e:
          raise RuntimeError(f"a frame-decoding worker process died ({e}); the shards committed "
                             f"so far are kept: rerun to resume the ingestion. (Workers are "
                             f"spawned: a script that ingests at its top level needs the "
                             f"`if __name__ == '__main__':` guard, or workers=1)") from e
        _write_shard(root, _shard_name(p["generation"], c), fk, results)
        work["files"] += len(fk)
        work["frames"] += sum(len(r["frames"]) for r in results)
        work["decoded"] += sum(r["decoded"] for r in results)
    finally:
      bar.close()
      if pool:
        pool.shutdown(cancel_futures=True)
  work["seconds"] = time.perf_counter() - t0
  index = os.path.join(root, "index.json")
  chunks = sum(len(p["chunks"]) for p in plans)
  if not new and not todo and os.path.exists(index) and len(_load(index)["shards"]) == chunks:
    return work  # up to date: no shard to wait for, no index to rebuild (every later run)
  _wait(root, plans, process_count, wait_s)
  _write_index(root, plans, opts)
  return work


class StaleStore(RuntimeError):
  """Files of the store changed or went since ingestion: make a new store."""


def _plan(files: Sequence[str], root: str, files_per_shard: int) -> tuple[list[dict], list]:
  """(every plan of the store, this call's new files): files not in any plan yet form a new
  generation, written once (the first writer's plan is everyone's)."""
  _remove_leftovers(root)
  keys = [file_key(p) for p in files]
  plans = [_load(os.path.join(root, p)) for p in _plans(root)]
  planned = {k[0]: k for p in plans for k in p["files"]}
  stale = [k[0] for k in keys if k[0] in planned and planned[k[0]] != k]
  gone = sorted(set(planned) - {k[0] for k in keys})
  if stale or gone:
    raise StaleStore(f"store {root}: {len(stale)} file(s) changed (first: {(stale or [''])[0]}) "
                     f"and {len(gone)} gone (first: {(gone or [''])[0]}) since they were ingested")
  new = [k for k in keys if k[0] not in planned]
  if new:
    gen = len(plans)
    chunks = [[i, min(i + files_per_shard, len(new))] for i in range(0, len(new), files_per_shard)]
    path = os.path.join(root, f"plan-{gen:05d}.json")
    _create_json(path, {"generation": gen, "files": new, "chunks": chunks})
    plans.append(_load(path))
    if plans[-1]["files"] != new:
      raise RuntimeError(f"store {root}: another process planned generation {gen} with other "
                         f"files (the folder changed during ingestion?); rerun")
  return plans, new


def _remove_leftovers(root: str, older_than_s: float = 3600) -> None:
  """Temporary files of writes that a killed process left behind (a write takes seconds, so one
  an hour old is nobody's)."""
  now = time.time()
  for f in os.listdir(root):
    path = os.path.join(root, f)
    if ".tmp-" in f:
      with contextlib.suppress(FileNotFoundError):  # renamed or removed by its writer meanwhile
        if now - os.path.getmtime(path) > older_than_s:
          os.remove(path)


# With jax.distributed running, the processes agree on the plans through its key-value store:
# scanning the folder separately, one process could see a file that another does not (added
# between their scans) and then wait for shards that nobody decodes. The key is unique per store
# and per call (every process calls `ingest` for a store the same number of times).
_agreements: dict[str, int] = {}


def _coordination_client():
  from lcnet import _jax_private  # only here: decoding workers import this module without jax
  return _jax_private.coordination_client()


def _process_id() -> int:
  from lcnet import _jax_private
  return _jax_private.process_id()


def _agreement_key(root: str) -> str:
  name = os.path.basename(os.path.abspath(root))  # the store's name holds its files' and options' hashes
  _agreements[name] = _agreements.get(name, 0) + 1
  return f"lcnet/framestore/{name}/{_agreements[name]}"


def _plans_of_process_0(client, key: str, files: Sequence[str], root: str,
                        wait_s: float) -> tuple[list[dict], list]:
  """(the plans process 0 made for this call, []); files this process saw that they do not hold
  (added after process 0 scanned) are left to the next run, with a warning."""
  try:
    said = json.loads(client.blocking_key_value_get(key, int(min(wait_s, 2**31 / 1e3 - 1) * 1e3)))
  except Exception as e:  # noqa: BLE001 - the coordination service's deadline error
    raise TimeoutError(f"store {root}: process 0's plans did not come within {wait_s:.0f}s (key "
                       f"{key}); every process must load the same data the same number of "
                       f"times, with process_index/process_count as jax.distributed has them") from e
  if "error" in said:
    raise (StaleStore if said["error"].startswith("StaleStore") else RuntimeError)(
        f"process 0 could not plan the store {root}: {said['error']}")
  plans = [_load(os.path.join(root, f"plan-{g:05d}.json")) for g in range(said["plans"])]
  planned = {k[0] for p in plans for k in p["files"]}
  late = sorted(set(map(os.path.abspath, files)) - planned)
  if late:
    log.warning("store %s: %d file(s) appeared after process 0 listed them (first: %s); the next "
                "run adds them", root, len(late), late[0])
  return plans, []  # "new" only lets a process skip the index check: process 0 decides that


def _wait(root: str, plans: list[dict], process_count: int, wait_s: float) -> None:
  """Until every chunk of every plan is committed (by whichever process owns it)."""
  end, said = time.monotonic() + wait_s, time.monotonic()
  missing = [(p["generation"], c) for p in plans for c, d in enumerate(_committed(root, p)) if not d]
  while True:  # re-checks only the shards still missing
    missing = [(g, c) for g, c in missing
               if not os.path.exists(os.path.join(root, _shard_name(g, c) + ".json"))]
    if not missing:
      return
    owners = sorted({c % process_count for _, c in missing})
    if time.monotonic() > end:
      raise TimeoutError(f"store {root}: {len(missing)} shard(s) still missing after {wait_s:.0f}s "
                         f"(processes {owners} decode them); rerun to resume the ingestion")
    if time.monotonic() - said > 60:
      log.info("waiting for %d shard(s) of processes %s", len(missing), owners)
      said = time.monotonic()
    time.sleep(0.2)


def _write_index(root: str, plans: list[dict], opts: FrameOptions) -> None:
  shards, skipped, too_small, decoded, files = [], [], [], 0, 0
  for p in plans:
    for c in range(len(p["chunks"])):
      name = _shard_name(p["generation"], c)
      s = _load(os.path.join(root, name + ".json"))
      shards.append({"name": name, "frames": s["frames"], "bytes": s["bytes"],
                     "min_side": s["min_side"]})
      skipped += s["skipped"]
      too_small += s["too_small"]
      decoded += s["decoded"]
      files += len(s["files"])
  index = {"version": VERSION, "options": dataclasses.asdict(opts), "shards": shards,
           "files": files, "frames": sum(s["frames"] for s in shards), "frames_decoded": decoded,
           "skipped": skipped, "too_small": too_small}
  path = os.path.join(root, "index.json")
  if not os.path.exists(path) or _load(path) != index:
    _write_json(path, index)


# ------------------------------------------------------------------------------------------------
# Reading.


class FrameStore(Sequence):
  """A store's frames as a sequence of uint8 [H, W, C] arrays (views of memory-mapped shards).

  Opening reads the index and maps every shard (pages are read only when a frame is used)."""

  def __init__(self, root: str):
    self.root = root
    self.index = _load(os.path.join(root, "index.json"))
    if self.index.get("version") != VERSION:
      raise ValueError(f"store {root} has version {self.index.get('version')}, not {VERSION}: "
                       f"delete it to rebuild")
    counts = [s["frames"] for s in self.index["shards"]]
    self._starts = np.cumsum([0] + counts).tolist()  # a list: bisect on it is the fastest lookup
    # every shard mapped now (2 maps each, pages read only when used): a store that is replaced
    # or removed later stays readable by this process
    self._maps = [self._map(k) for k in range(len(counts))]

  def __len__(self) -> int:
    return self._starts[-1]

  def __getstate__(self):  # pickled for loader workers: the root and index, not the mappings
    return {k: v for k, v in self.__dict__.items() if k != "_maps"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._maps = [self._map(k) for k in range(len(self.index["shards"]))]

  @property
  def min_side(self) -> int | None:
    """The smallest frame side in the store (from the index)."""
    sides = [s["min_side"] for s in self.index["shards"] if s["min_side"] is not None]
    return min(sides) if sides else None

  def _map(self, k: int) -> tuple[np.ndarray, np.ndarray]:
    shard = self.index["shards"][k]
    name = os.path.join(self.root, shard["name"])
    size = os.path.getsize(name + ".u8")
    if size != shard["bytes"]:
      raise ValueError(f"store {self.root}: shard {shard['name']} holds {size} bytes, its index "
                       f"says {shard['bytes']}; delete the store to rebuild it")
    table = np.load(name + ".npy", mmap_mode="r")
    buf = np.memmap(name + ".u8", np.uint8, "r") if size else np.zeros(0, np.uint8)
    # plain ndarray views of the maps: indexing a np.memmap is several times slower
    return table.view(np.ndarray), buf.view(np.ndarray)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    i = int(i)
    n = self._starts[-1]
    if i < 0:
      i += n
    if not 0 <= i < n:
      raise IndexError(f"frame {i} of {n}")
    k = bisect.bisect_right(self._starts, i) - 1
    table, buf = self._maps[k]
    off, h, w, c = table[i - self._starts[k]].tolist()
    return buf[off:off + h * w * c].reshape(h, w, c)


def open_or_ingest(files: Sequence[str], opts: FrameOptions, root: str,
                   **kw) -> tuple[FrameStore, dict]:
  """The store at `root` for these files, ingested (or brought up to date) first if needed, and
  this process' work on it (`ingest`). A store whose files changed or went is rebuilt."""
  try:
    work = ingest(files, opts, root, **kw)
  except StaleStore as e:
    if kw.get("process_count", 1) > 1:
      raise StaleStore(f"{e}; with several processes delete it first (one process), then rerun") \
          from None
    with _rebuild_lock(root):  # two runs that find it stale at once: one rebuilds, one waits
      try:  # rebuilt by another run while this one waited?
        work = ingest(files, opts, root, **kw)
      except StaleStore:
        log.warning("%s: rebuilding it", e)
        aside = f"{root}.stale-{os.getpid()}"  # renamed first: a reader keeps its maps of the old one
        os.replace(root, aside)
        shutil.rmtree(aside, ignore_errors=True)
        work = ingest(files, opts, root, **kw)
  return FrameStore(root), work


@contextlib.contextmanager
def _rebuild_lock(root: str):
  """An exclusive lock on rebuilding the store at `root`, across processes of this machine and
  threads (a lock file beside the store, hidden: the cache lists stores only)."""
  import fcntl  # POSIX only, as the store's memory maps and the worker pool are
  head, name = os.path.split(os.path.abspath(root))
  with open(os.path.join(head, f".{name}.lock"), "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
