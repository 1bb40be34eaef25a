"""lcnet.aot: the per-device memory of the compiled sharded step and its collectives."""
import math

import pytest

from lcnet import aot, halo, model
from lcnet.config import geometry


def expected_kernel_bytes_per_device(cfg, rows, cols, copies, itemsize=4):
  """Every kernel's tile (ceil(Ho / rows) x ceil(Wo / cols) locations), encoder and decoder,
  times the copies the optimiser keeps (params + momentum = 2), `itemsize` bytes each."""
  total = 0
  for g in geometry(cfg.model):
    tile = halo.tile(g.out_hw[0], rows) * halo.tile(g.out_hw[1], cols)
    total += 2 * tile * math.prod(g.encoder_shape[2:]) * itemsize
  return copies * total


@pytest.mark.needs_devices(8)
@pytest.mark.parametrize("dtype, itemsize", [("float32", 4), ("bfloat16", 2)])
def test_aot_report_matches_the_state_bytes_per_device(dtype, itemsize):
  """Weights, momentum and the batch in `dtype` (bfloat16: half of float32's bytes)."""
  r = aot.report("tiny", 8, 8, "momentum", mesh=(2, 2, 2), param_dtype=dtype, compute_dtype=dtype)
  cfg = model.preset("tiny")
  kernels = expected_kernel_bytes_per_device(cfg, 2, 2, copies=2, itemsize=itemsize)
  img = cfg.model.image_size
  batch = (8 // 2) * halo.tile(img[0], 2) * halo.tile(img[1], 2) * itemsize
  scalars = 4 + 8  # step (int32), PRNG key (2 x uint32); momentum keeps no count
  got = r["per_device_bytes"]
  assert got["inputs"] == kernels + batch + scalars, (got, kernels, batch)
  # XLA's argument bytes are the inputs and any constants jax hands the program as arguments
  # (none in jax 0.10; in 0.12.1 the local op's int32 index maps, 74,240 bytes here)
  assert got["constants"] >= 0 and got["constants"] % 4 == 0, got
  assert got["alias"] >= kernels  # the donated state is updated in place
  assert r["params"] == model.count_params(cfg)["trainable"] and r["devices"] == 8
  c = r["collectives"]
  assert c["all-gather"]["count"] == 0 and c["all-to-all"]["count"] == 0
  assert c["collective-permute"]["count"] > 0 and c["all-reduce"]["count"] > 0


def test_collectives_parser_on_hlo_text():
  hlo = """
  %a = f32[4,8]{1,0} all-gather(f32[1,8]{1,0} %x), dimensions={0}
  %b = (f32[3]{0}, f32[3]{0}) collective-permute-start(f32[3]{0} %y), source_target_pairs={{0,1}}
  %c = f32[3]{0} collective-permute-done((f32[3]{0}, f32[3]{0}) %b)
  ROOT %d = f32[] all-reduce(f32[] %z), replica_groups={}, to_apply=%add
  """
  c = aot.collectives(hlo)
  assert c["all-gather"] == {"count": 1, "bytes": 128}
  assert c["collective-permute"] == {"count": 1, "bytes": 12}
  assert c["all-reduce"] == {"count": 1, "bytes": 4}


def test_default_mesh_is_spatial_and_square():
  assert aot.default_mesh(64) == (1, 8, 8) and aot.default_mesh(8) == (1, 2, 4)
  assert aot.default_mesh(7) == (1, 1, 7)
