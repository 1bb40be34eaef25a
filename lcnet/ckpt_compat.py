"""Whether a checkpoint fits the model being restored, across meshes: the same leaves, dtypes and
valid kernel shapes (a kernel saved as the canvas of one mesh may be restored onto another: its
dims 0/1 are padded or trimmed, never below the valid shape the config gives)."""
from __future__ import annotations

import warnings

import jax
import numpy as np

from lcnet import checksums
from lcnet import mesh as mesh_lib
from lcnet.config import Config, geometry


class CheckpointWarning(UserWarning):
  """An unreadable checkpoint was skipped, or one was saved with other settings."""


class ConfigMismatchError(ValueError):
  """The checkpoint holds a different model (or optimiser state) than the one being restored."""


def check(step: int, directory: str, cfg: Config | None, saved_cfg: Config, meta, target,
          cast: bool = False):
  """ConfigMismatchError listing parameters whose valid shapes, structure or dtypes differ (with
  `cast`, floating dtypes may differ: the restore casts them)."""
  cfg = cfg or saved_cfg
  saved = {checksums.path(p): m for p, m in jax.tree_util.tree_flatten_with_path(meta)[0]}
  leaves = jax.tree_util.tree_flatten_with_path(target)[0]
  want = {checksums.path(p): t for p, t in leaves}
  valid_shapes = {checksums.path(p): mesh_lib.valid_kernel_shape(p, t, cfg) for p, t in leaves}
  bad, dtypes = _geometry_diff(saved_cfg, cfg), []  # dtypes: the mismatches a cast would mend
  bad += [f"{p}: only in the checkpoint {tuple(saved[p].shape)}" for p in saved if p not in want]
  bad += [f"{p}: only in the model {tuple(want[p].shape)}" for p in want if p not in saved]
  for p in saved.keys() & want.keys():
    shape = stored_shape(want[p])
    valid = valid_shapes[p]
    if not _compatible(tuple(saved[p].shape), shape, valid):
      bad.append(f"{p}: checkpoint {tuple(saved[p].shape)}, model {shape}"
                 + (f" (valid {valid})" if valid else ""))
    elif np.dtype(saved[p].dtype) != stored_dtype(want[p]):
      castable = _floating(saved[p].dtype) and _floating(stored_dtype(want[p]))
      if not (cast and castable):
        (dtypes if castable else bad).append(
            f"{p}: checkpoint {np.dtype(saved[p].dtype)}, model {stored_dtype(want[p])}")
  if bad or dtypes:
    raise ConfigMismatchError(
        f"checkpoint step {step} in {directory} does not fit the model being restored:\n  "
        + "\n  ".join(sorted(set(bad + dtypes))) + "\nRestore it with the config it was saved with "
        f"(Checkpointer.saved_config({step})) or train this config in a new run directory"
        + ("; only the dtypes differ: Checkpointer.restore(..., cast=True) casts them."
           if not bad else "."))
  changed = _config_diff(saved_cfg, cfg)
  if changed:
    warnings.warn(f"checkpoint step {step} was saved with other settings (the new ones are "
                  f"used): {'; '.join(changed)}", CheckpointWarning, stacklevel=3)


def _floating(dtype) -> bool:
  return (not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
          and jax.numpy.issubdtype(np.dtype(dtype), jax.numpy.floating))


def as_saved(target, meta):
  """`target` with each floating leaf in the dtype it was saved in (to read, verify, then cast)."""
  saved = {checksums.path(p): m for p, m in jax.tree_util.tree_flatten_with_path(meta)[0]}

  def leaf(path, t):
    m = saved.get(checksums.path(path))
    if m is None or not _floating(t.dtype) or not _floating(m.dtype):
      return t
    return jax.ShapeDtypeStruct(t.shape, np.dtype(m.dtype), sharding=t.sharding)
  return jax.tree_util.tree_map_with_path(leaf, target)


def stored_shape(x) -> tuple[int, ...]:
  """Shape as written: a typed PRNG key is stored as its key data (e.g. uint32[..., 2])."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data, x).shape)
  return tuple(x.shape)


def stored_dtype(x) -> np.dtype:
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return np.dtype(jax.eval_shape(jax.random.key_data, x).dtype)
  return np.dtype(x.dtype)


def _compatible(saved, want, valid) -> bool:
  """Equal, or a canvas of the same valid kernel: same trailing dims, dims 0/1 >= valid."""
  if saved == want:
    return True
  if valid is None or len(saved) != len(want) or saved[2:] != want[2:] or want[2:] != valid[2:]:
    return False
  return all(min(a, b) >= v for a, b, v in zip(saved[:2], want[:2], valid[:2]))


def _geometry_diff(saved: Config, now: Config) -> list[str]:
  a, b = geometry(saved.model), geometry(now.model)
  out = []
  for i in range(max(len(a), len(b))):
    sa = a[i].encoder_shape if i < len(a) else None
    sb = b[i].encoder_shape if i < len(b) else None
    if sa != sb:
      for part in ("encoder", "decoder"):
        out.append(f"params/layer{i + 1}/{part}/kernel: checkpoint {sa or 'absent'}, "
                   f"model {sb or 'absent'}")
  return out


# How batches are delivered, not what they hold (the batch of step t is the same either way,
# `lcnet.loader`), and how the local op runs (its tuning changes speed and summation order only,
# e.g. a run resumed on a GPU from a CPU's checkpoint): changing them on resume is not worth a
# warning.
DELIVERY_ONLY = ("train.loader_workers", "train.prefetch")
SPEED_ONLY = "model.local_op."


def _config_diff(saved: Config, now: Config) -> list[str]:
  """Changed settings other than the mesh (a checkpoint restores onto any mesh), the loader's
  delivery settings and the local op's tuning."""
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      if isinstance(v, dict):
        out.update(flat(v, f"{prefix}{k}."))
      else:
        out[prefix + k] = v
    return out
  a, b = flat(saved.to_dict()), flat(now.to_dict())
  return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
          if not k.startswith(("mesh.", SPEED_ONLY)) and k != "name" and k not in DELIVERY_ONLY
          and a.get(k) != b.get(k)]
