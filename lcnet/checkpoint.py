"""Orbax checkpoints of a run's TrainState: asynchronous, crash-safe, resumable bit-for-bit, and
restorable onto any mesh. The only module in lcnet that imports orbax.

Layout: RUN/checkpoints/<step>/state (the TrainState: params, opt_state, step, rng),
.../config (the Config as JSON, checked on restore) and .../checksums (one uint32 per array,
checked on restore). A save is written into `<step>.orbax-checkpoint-tmp` and renamed when
complete, so a step directory is either whole or absent; partial saves left by a crash are
ignored, and removed when a writer opens the run.

Meshes: a kernel on a mesh of R x Q spatial devices is stored as a zero-padded canvas of
R*ceil(Ho/R) x Q*ceil(Wo/Q) locations (dims 0 and 1). Restoring onto another mesh pads with zeros
or drops trailing entries of dims 0/1, never below the valid (Ho, Wo) the config gives, so only the
canvas' zero padding is ever dropped. Restore reads straight into an abstract target (shapes,
dtypes and shardings of the *current* mesh), nothing is allocated first.

Multi-host: every process calls the same methods in the same order; each writes its own shards
(`ocdbt.process_<i>`) into the one run directory, which must be on a filesystem all hosts share;
process 0 writes the metadata and renames the step when all have finished. Only one run may write
to a directory at a time. Preemption: the first SIGTERM or SIGINT makes `should_stop(step)` true
(a second one stops at once, unsaved); with several processes all stop at the same step.

`train.fit` is the caller to read: it resumes from `restore(train.abstract_state(cfg))`, calls
`save(step, state)` after every step (only every `every` steps write) and `should_stop(step)`
(SIGTERM / SIGINT, `lcnet.preemption`), and `save(..., force=True)` at the end. Checksums:
`lcnet.checksums`; which checkpoints fit which model: `lcnet.ckpt_compat`.

A notebook loads a run's parameters onto one device with `checkpoint.load_params(run_dir)`.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from lcnet import checksums, ckpt_compat, preemption
from lcnet.ckpt_compat import CheckpointWarning, ConfigMismatchError  # noqa: F401 (the API)
from lcnet.config import Config, geometry

log = logging.getLogger(__name__)

SUBDIR = "checkpoints"
TMP_SUFFIX = ".orbax-checkpoint-tmp"
EXIT_PREEMPTED = 0  # exit status of a run stopped by SIGTERM/SIGINT after committing a checkpoint


class NotEnoughDiskError(OSError):
  """The run directory's filesystem cannot hold the checkpoints a run will write."""


def saves_to_come(start: int, steps: int, every: int | None) -> int:
  """How many checkpoints a run from step `start` to `steps` writes: every `every` steps (none
  without `every`) and the final one."""
  due = set(range(every, steps + 1, every)) if every else set()
  return len({s for s in due | {steps} if s > start})


def state_bytes(state) -> int:
  """Bytes of a state's arrays (concrete or abstract), which an uncompressed checkpoint writes."""
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(state) if hasattr(x, "shape")
             and not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)) + 64


def _size(n: int) -> str:
  return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e4 else f"{n} bytes"


def checkpoint_dir(run_dir: str) -> str:
  """RUN/checkpoints, or run_dir itself when it is already a checkpoint directory."""
  sub = os.path.join(run_dir, SUBDIR)
  if os.path.isdir(sub) or not os.path.isdir(run_dir):
    return sub
  return run_dir if any(n.isdigit() for n in os.listdir(run_dir)) else sub


class Checkpointer:
  """One run directory's checkpoints: async saves every `every` steps, the last `keep` kept.

  `read_only=True` opens a run for reading only (no clean-up, no signal handlers); `cfg=None`
  then takes the config from the checkpoint. `verify`: save checksums of every array and check
  them on restore, so a flipped bit is reported instead of trained on (one pass over the state).
  `compress`: zstd-compress the arrays (orbax's default). Off here: on float weights it saves
  ~10% of the bytes but made saves ~1.7x and restores ~1.3x slower (BENCHMARKS.md, Checkpoints).
  """

  def __init__(self, workdir: str, cfg: Config | None = None, *, every: int | None = None,
               keep: int | None = 3, async_save: bool = True, handle_signals: bool = True,
               read_only: bool = False, verify: bool = True, compress: bool = False):
    self.workdir, self.cfg, self.every = os.path.abspath(workdir), cfg, every
    self.verify, self.keep = verify, (None if read_only else keep)
    self.directory = checkpoint_dir(self.workdir)
    self.read_only = read_only
    if cfg is None and not read_only:
      raise ValueError("a Checkpointer that saves needs the run's cfg (it is saved and checked)")
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"no checkpoints at {self.directory}: {self.workdir} is not a run "
                              f"directory with checkpoints (check the path; runs write them to "
                              f"RUN/{SUBDIR})")
    if not read_only:  # (orbax's cleanup_tmp_directories runs asynchronously, and missed these)
      self._clean_partial_saves()
    # Orbax decides which steps are due: every `every` steps (none without `every`; `save(force=
    # True)` always writes). Its default policies would also save the first step of a run.
    policies = ocp.checkpoint_managers
    due = policies.FixedIntervalPolicy(every) if every else policies.SpecificStepsPolicy(())
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save,
        save_decision_policy=None if read_only else due)
    handlers = {"state": ocp.PyTreeCheckpointHandler(use_compression=compress),
                "config": ocp.JsonCheckpointHandler(),
                "checksums": ocp.JsonCheckpointHandler()}
    self._mgr = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=opts)
    self._stop = (preemption.StopRequest(self._mgr.reached_preemption)
                  if handle_signals and not read_only else None)

  def check_room(self, state, start: int, steps: int) -> int:
    """Refuse a run whose checkpoints cannot fit on the run directory's filesystem, before it
    trains (else it dies at its first save that does not fit, after the steps before it, in a
    torrent of orbax's background errors). At most `keep` + 1 checkpoints are on disk at once
    (a save is committed before the oldest is removed). Returns the bytes it needs."""
    saves, have = saves_to_come(start, steps, self.every), len(self.all_steps())
    keep = self.keep
    more = saves if keep is None else min(saves, max(keep + 1 - have, 1))
    each = state_bytes(state)
    need, free = more * each, shutil.disk_usage(self.directory).free
    if jax.process_count() > 1:  # every process decides alike: on process 0's view, in MB
      free = int(multihost_utils.broadcast_one_to_all(np.float32(free / 1e6))) * 10**6
    if need > free:
      raise NotEnoughDiskError(
          f"not enough disk space for this run's checkpoints: {self.directory} has "
          f"{_size(free)} free, and the run will hold up to {more} more checkpoint(s) of "
          f"{_size(each)} at once ({saves} saves to come, train.save_every={self.every or 0}, "
          f"train.keep_checkpoints={keep}): {_size(need)}. Free some space, write the run to "
          f"another filesystem (its workdir), or lower train.keep_checkpoints.")
    return need

  # -- steps ----------------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    """Steps of the complete (committed) checkpoints, oldest first."""
    return sorted(self._mgr.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None if there is none (`restore` may still
    fall back to an older one if it turns out unreadable: the state's own step says which)."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  # -- save -----------------------------------------------------------------------------------

  def save(self, step: int, state, force: bool = False) -> bool:
    """Start an asynchronous save of `state` (whose `state.step == step`) if it is due.

    Due: `force`, or `step` a multiple of `every`. Returns once the arrays are copied off the
    devices (so the next, state-donating train step may run); the write goes on in the
    background. A save still in flight is waited for first. False if not due or `step` is
    already saved.
    """
    if self.read_only:
      raise PermissionError(f"{self.directory} was opened read_only")
    if step in self._mgr.all_steps() or not (force or self._mgr.should_save(step)):
      return False
    args = {"state": ocp.args.PyTreeSave(state)}
    if self.verify:
      args["checksums"] = ocp.args.JsonSave(checksums.of(state))
    args["config"] = ocp.args.JsonSave(self.cfg.to_dict())
    return bool(self._mgr.save(step, args=ocp.args.Composite(**args), force=True))

  def wait(self):
    """Block until the save in flight (if any) is committed; raises if it failed."""
    self._mgr.wait_until_finished()

  def close(self):
    """Commit the save in flight, release orbax's threads, give back the signal handlers."""
    self._mgr.wait_until_finished()
    self._mgr.close()
    if self._stop:
      self._stop.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # -- restore --------------------------------------------------------------------------------

  def saved_config(self, step: int) -> Config:
    """The Config saved with checkpoint `step`."""
    d = self._mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    if d is None:
      raise ValueError(f"checkpoint {step} in {self.directory} has no config item")
    return Config.from_dict(d)

  def restore(self, target, step: int | None = None, *, cast: bool = False):
    """Read checkpoint `step` (default: the latest readable one) into `target`'s layout.

    `target`: a pytree (e.g. `train.abstract_state(cfg)`, built for the current cfg.mesh) of
    `jax.ShapeDtypeStruct`s with
    shardings for the current mesh (arrays are accepted for their layout only). Kernel dims 0/1
    may differ from the saved canvas (another mesh): zero-padded or trimmed. A latest checkpoint
    that cannot be read is reported with a warning naming its step and the previous one is used;
    the unreadable ones are renamed `<step>.corrupt` once another restored. Raises
    ConfigMismatchError if the model differs, FileNotFoundError if there is no checkpoint.
    `cast=True` accepts floating arrays saved in another dtype (a float32 checkpoint into a
    bfloat16 run, or back): they are read and checksum-verified as saved, then cast to `target`'s.
    """
    target = abstract(target)
    steps = [step] if step is not None else self.all_steps()[::-1]
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}; start a new run or "
                              f"point at the run directory that has one")
    failed: list[tuple[int, str]] = []
    for s in steps:
      state, err = self._try_restore(s, target, cast)
      if _all_hosts_ok(err is None):
        self._quarantine([f for f, _ in failed])
        return state
      failed.append((s, err or "unreadable on another process"))
      older = [t for t in steps if t < s]
      warnings.warn(f"checkpoint step {s} in {self.directory} is unreadable ({failed[-1][1]}); "
                    + (f"falling back to step {older[0]}" if older else "no older one left"),
                    CheckpointWarning, stacklevel=2)
    raise RuntimeError(f"no checkpoint in {self.directory} could be read: " +
                       "; ".join(f"step {s}: {e}" for s, e in failed))

  def _try_restore(self, step: int, target, cast: bool = False):
    """(state, None), or (None, why) if the checkpoint is unreadable; raises on a mismatch."""
    try:
      saved_cfg, meta = self.saved_config(step), self._mgr.item_metadata(step)["state"]
      if meta is None:
        raise ValueError("no state item")
    except Exception as e:  # unreadable metadata or config
      return None, _brief(e)
    meta = getattr(meta, "tree", meta)
    ckpt_compat.check(step, self.directory, self.cfg, saved_cfg, meta, target, cast)
    read = ckpt_compat.as_saved(target, meta) if cast else target
    try:
      restore_args = ocp.checkpoint_utils.construct_restore_args(read, strict=False)
      state = self._mgr.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(read, restore_args=restore_args)))["state"]
      self._verify(step, state)
      if cast:
        state = jax.tree.map(lambda a, t: a if a.dtype == t.dtype else a.astype(t.dtype), state,
                             target)
      return state, None
    except Exception as e:  # unreadable arrays: a corrupt or truncated checkpoint
      return None, _brief(e)

  def _verify(self, step: int, tree, prefix: str = ""):
    """ValueError if `tree`'s checksums differ from those saved with the step (if any)."""
    if not self.verify:
      return
    saved = self._mgr.restore(step, args=ocp.args.Composite(
        checksums=ocp.args.JsonRestore()))["checksums"]
    if saved is None:
      return  # saved with verify=False
    now = checksums.of(tree, prefix)
    bad = [p for p in now if p in saved and saved[p] != now[p]]
    if bad:
      raise ValueError(f"checksum mismatch in {', '.join(bad)}")

  def _quarantine(self, steps: list[int]):
    """Rename unreadable step directories out of orbax's sight (kept for inspection)."""
    if steps and jax.process_index() == 0 and not self.read_only:
      for s in steps:
        src, dst = os.path.join(self.directory, str(s)), os.path.join(self.directory, f"{s}.corrupt")
        n = 1
        while os.path.exists(dst):
          dst, n = os.path.join(self.directory, f"{s}.corrupt.{n}"), n + 1
        if os.path.isdir(src):
          os.rename(src, dst)
          log.warning("moved unreadable checkpoint %s to %s", src, dst)
    if steps and not self.read_only:
      _barrier("lcnet_ckpt_quarantine")
      self._mgr.reload()

  def _clean_partial_saves(self):
    """Remove `*.orbax-checkpoint-tmp*` directories: saves a crash left unfinished."""
    if jax.process_index() == 0 and os.path.isdir(self.directory):
      for name in sorted(os.listdir(self.directory)):
        if TMP_SUFFIX in name:
          log.warning("removing partial save %s (a save that never completed)", name)
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    _barrier("lcnet_ckpt_clean")

  # -- preemption (lcnet.preemption) ------------------------------------------------------------

  @property
  def signal(self) -> int | None:
    """The signal that asked the run to stop, once one has."""
    return self._stop.signal if self._stop else None

  def should_stop(self, step: int) -> bool:
    """True once SIGTERM/SIGINT asked the run to stop (agreed by all processes at the same step):
    then call `stop(step, state)`. Call it after every train step, on every process."""
    return bool(self._stop) and self._stop.should_stop(step)

  def stopped_by_signal(self, grace_s: float = 1.0) -> bool:
    """Whether a signal asked this process to stop (waiting up to `grace_s` for its handler to
    run): an error that the stop signal itself caused, such as a loader worker that the same
    SIGTERM to the process group killed while it was starting, is then that stop and not a
    failure. Always False with several processes, which must agree on where they stop
    (`should_stop`)."""
    if not self._stop or jax.process_count() > 1:
      return False
    end = time.monotonic() + grace_s
    while self._stop.signal is None and time.monotonic() < end:
      time.sleep(0.01)  # a pending handler runs in this (main) thread meanwhile
    return self._stop.signal is not None

  def stop(self, step: int, state) -> str:
    """Save `state` now and wait until it is committed; returns the how-to-resume message."""
    self.save(step, state, force=True)
    self.wait()
    return (f"lcnet: stopped by {self._stop.name()} after step {step}; checkpoint {step} is "
            f"committed in {self.directory}. To resume, run the same command again (it continues "
            f"from step {step}), or in Python: train.fit(cfg, workdir={self.workdir!r}).")


def load_params(run_dir: str, step: int | None = None, device=None) -> dict:
  """A run's parameters on one device (default: the first), trimmed to their valid shapes.

  For notebooks: `params = checkpoint.load_params("runs/demo")`, then
  `nnx.merge(train.graphdef(cfg), params)`. Reads only the parameters, not the optimiser state.
  """
  ckpt = Checkpointer(run_dir, read_only=True)
  try:
    steps = [step] if step is not None else ckpt.all_steps()[::-1]
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {ckpt.directory}")
    errors = []
    for s in steps:
      try:
        cfg = ckpt.saved_config(s)
        return _read_params(ckpt, s, cfg, device)
      except Exception as e:  # unreadable: try the previous one
        errors.append(f"step {s}: {_brief(e)}")
        warnings.warn(f"checkpoint step {s} in {ckpt.directory} is unreadable ({_brief(e)}); "
                      f"trying the previous one", CheckpointWarning, stacklevel=2)
    raise RuntimeError(f"no checkpoint in {ckpt.directory} could be read: " + "; ".join(errors))
  finally:
    ckpt.close()


def _read_params(ckpt: Checkpointer, step: int, cfg: Config, device) -> dict:
  sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
  meta = ckpt._mgr.item_metadata(step)["state"]
  meta = getattr(meta, "tree", meta)
  target, restore_args = {}, {}
  for i, g in enumerate(geometry(cfg.model)):
    name = f"layer{i + 1}"
    target[name], restore_args[name] = {}, {}
    for part in ("encoder", "decoder"):
      dtype = meta["params"][name][part]["kernel"].dtype
      target[name][part] = {"kernel": jax.ShapeDtypeStruct(g.encoder_shape, dtype,
                                                            sharding=sharding)}
      restore_args[name][part] = {"kernel": ocp.ArrayRestoreArgs(
          sharding=sharding, global_shape=g.encoder_shape, dtype=dtype, strict=False)}
  out = ckpt._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
      item={"params": target}, restore_args={"params": restore_args}, partial_restore=True)))
  params = out["state"]["params"]
  ckpt._verify(step, params, "params/")
  return params


# -- helpers --------------------------------------------------------------------------------------


def abstract(tree):
  """ShapeDtypeStructs with shardings (one device if none given) for arrays or structs."""
  default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def one(x):
    sharding = getattr(x, "sharding", None) or default
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(one, tree)


def _brief(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def _all_hosts_ok(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


def _barrier(name: str):
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
