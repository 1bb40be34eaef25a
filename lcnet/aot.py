"""Ahead-of-time memory and communication report of a sharded train step, with nothing allocated.

    python -m lcnet.aot --preset coates2013_11b --devices 64 --batch 32 --optimizer momentum
    python -m lcnet.aot --preset le2012 --devices 8 --mesh 1,2,4 --json le2012_aot.json

Simulates --devices CPU devices, builds the abstract sharded state (`train.abstract_state`) and
batch, lowers and compiles the step, and prints the parameter count, the per-device memory of the
compiled program (`compiled.memory_analysis()`) and its collectives with their bytes. The numbers
are those of the XLA CPU compiler; a GPU compile of the same program differs in temp and fusion.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time

COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
_DTYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8,
                "pred": 1, "s8": 1, "u8": 1}


def shard_bytes(tree) -> int:
  """Bytes of one device's shard of every abstract array in `tree` (a typed key: its key data)."""
  import jax
  return sum(math.prod(x.sharding.shard_shape(x.shape) if x.sharding is not None else x.shape)
             * x.dtype.itemsize for x in jax.tree.leaves(tree))


def default_mesh(devices: int) -> tuple[int, int, int]:
  """data x rows x cols for `devices`: all spatial, rows x cols as square as possible."""
  rows = max(d for d in range(1, int(math.isqrt(devices)) + 1) if devices % d == 0)
  return (1, rows, devices // rows)


def _shape_bytes(shape_text: str) -> int:
  """Bytes of an HLO result type: `f32[2,3]{1,0}` or a tuple `(f32[2], f32[2])`."""
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape_text):
    if dtype in _DTYPE_BYTES:
      total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
  return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {count, bytes}} of the collectives in compiled HLO text (bytes of their results, per
  device; async pairs are counted once, at their -start)."""
  out = {k: {"count": 0, "bytes": 0} for k in COLLECTIVES}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT\s+)?\S+\s*=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(", line)
    if not m:
      continue
    kind, shape = m.group(2), m.group(1)
    if m.group(3):  # -start returns (operand, result, ...) buffers: count the result
      parts = re.findall(r"[a-z]+\d*\[[\d,]*\]", shape)
      shape = parts[1] if len(parts) > 1 else shape
    out[kind]["count"] += 1
    out[kind]["bytes"] += _shape_bytes(shape)
  return out


def report(preset: str, devices: int, batch: int, optimizer: str,
           mesh: tuple[int, int, int] | None = None, overrides: dict | None = None,
           active: tuple[int, ...] | None = None, param_dtype: str = "float32",
           compute_dtype: str = "float32") -> dict:
  """Compile the sharded step of a preset for the current devices (call after they exist)."""
  import jax
  import jax.numpy as jnp

  from lcnet import mesh as mesh_lib
  from lcnet import model, train
  from lcnet.config import MeshConfig, replace

  cfg = model.preset(preset)
  if overrides:
    cfg = cfg.replace(model=dict(layers=tuple(replace(l, **overrides) for l in cfg.model.layers)))
  mesh_shape = mesh or default_mesh(devices)
  cfg = cfg.replace(train=dict(batch_size=batch, optimizer=optimizer), mesh=MeshConfig(*mesh_shape),
                    model=dict(param_dtype=param_dtype, compute_dtype=compute_dtype))
  if cfg.mesh.size != devices:
    raise ValueError(f"--mesh {mesh_shape} has {cfg.mesh.size} devices, not --devices {devices}")
  state = train.abstract_state(cfg)
  m = mesh_lib.mesh_for(cfg)
  spec = (batch, *mesh_lib.canvas_hw(cfg.model.image_size, cfg.mesh), cfg.model.channels)
  x = jax.ShapeDtypeStruct(spec, jnp.dtype(compute_dtype),
                           sharding=mesh_lib.batch_sharding(m) if m is not None else None)
  t0 = time.perf_counter()
  compiled = train.make_train_step(cfg, active).lower(state, x).compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  per = {"argument": mem.argument_size_in_bytes, "output": mem.output_size_in_bytes,
         "alias": mem.alias_size_in_bytes, "temp": mem.temp_size_in_bytes}
  per["total"] = per["argument"] + per["output"] - per["alias"] + per["temp"]
  # what the arguments hold besides the state and the batch: constants that jax passes to the
  # program as arguments (0.12.1 does, e.g. the local op's index maps; 0.10 embeds them in it)
  per["inputs"] = shard_bytes((state, x))
  per["constants"] = per["argument"] - per["inputs"]
  return {"preset": preset, "mesh": list(mesh_shape), "batch": batch, "optimizer": optimizer,
          "param_dtype": param_dtype, "compute_dtype": compute_dtype,
          "active_layers": list(active) if active else "all",
          "params": model.count_params(cfg)["trainable"], "devices": devices,
          "per_device_bytes": per, "collectives": collectives(compiled.as_text()),
          "compile_seconds": round(seconds, 2)}


def format_report(r: dict) -> str:
  gib = lambda b: f"{b / 2**30:8.3f} GiB" if b >= 2**30 else f"{b / 2**20:8.3f} MiB"
  lines = [f"{r['preset']}: {r['params']:,} trainable parameters on {r['devices']} devices "
           f"(mesh data x rows x cols = {'x'.join(map(str, r['mesh']))}), batch {r['batch']}, "
           f"{r['optimizer']}, params {r['param_dtype']}, compute {r['compute_dtype']}, training "
           f"layers {r['active_layers']}; compiled in "
           f"{r['compile_seconds']:.1f} s",
           "per-device memory:"]
  lines += [f"  {k:9s}{gib(v)}" for k, v in r["per_device_bytes"].items()]
  lines.append("collectives (per device, per step):")
  lines += [f"  {k:19s}{v['count']:5d} x  {v['bytes'] / 2**20:10.3f} MiB"
            for k, v in r["collectives"].items()]
  return "\n".join(lines)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", required=True)
  ap.add_argument("--devices", type=int, required=True)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--optimizer", default="momentum")
  ap.add_argument("--mesh", default=None, help="data,rows,cols (default: 1 x square-ish spatial)")
  ap.add_argument("--maps", type=int, default=None, help="override every layer's maps")
  ap.add_argument("--rf", type=int, default=None, help="override every layer's receptive field")
  ap.add_argument("--layers", default=None,
                  help="train only these layers (0-based, comma separated): a greedy stage")
  ap.add_argument("--param-dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--json", default=None, help="also write the report here")
  args = ap.parse_args(argv)
  from lcnet import distributed
  distributed.set_cpu_device_count(args.devices)  # before jax starts: simulated CPU devices
  import jax
  jax.config.update("jax_platforms", "cpu")
  mesh = tuple(int(v) for v in args.mesh.split(",")) if args.mesh else None
  if mesh is not None and len(mesh) != 3:
    sys.exit(f"--mesh wants data,rows,cols; got {args.mesh!r}")
  overrides = {k: v for k, v in (("maps", args.maps), ("rf", args.rf)) if v is not None}
  active = tuple(int(v) for v in args.layers.split(",")) if args.layers else None
  r = report(args.preset, args.devices, args.batch, args.optimizer, mesh, overrides, active,
             args.param_dtype, args.compute_dtype)
  print(format_report(r))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(r, f, indent=2)


if __name__ == "__main__":
  main()
