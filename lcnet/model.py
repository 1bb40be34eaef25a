"""The Le et al. (2012) deep sparse autoencoder: the sublayer objective, the 3-layer stack, presets.

One layer = untied local filtering (W1) -> L2 pooling (fixed uniform H) -> LCN, trained with the
reconstruction-TICA objective per example
    ||W2 W1^T x - x||^2 + lam * sum_j sqrt(eps + H_j (W1^T x)^2)
with an untied decoder W2. Each layer's input is a constant for the layers below it (stop_gradient),
so joint training minimises the sum of the layers' objectives as in Le et al.
(`lcnet.train.make_layer_grads`).
"""
from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from lcnet import layers, ops, spatial
from lcnet.config import Config, LayerConfig, ModelConfig, TrainConfig, geometry


class AutoencoderLayer(nnx.Module):
  """One of the three layers: encoder, untied decoder, pooling and LCN, and its objective.

  Every method takes a `grid` (`lcnet.spatial`): DENSE runs on whole arrays, a `Tiled` grid on
  this device's spatial tile inside `jax.shard_map`; the maths is written once.
  """

  def __init__(self, cfg: LayerConfig, in_hw, in_channels: int, init_scale: float = 1.0,
               tuning: ops.LocalTuning | None = None, *, rngs: nnx.Rngs,
               param_dtype: str = "float32", compute_dtype: str = "float32"):
    k, s = (cfg.rf, cfg.rf), (cfg.stride, cfg.stride)
    self.lam = cfg.lam
    dtypes = dict(param_dtype=param_dtype, compute_dtype=compute_dtype)
    self.encoder = layers.LocalFilter(in_hw, in_channels, cfg.maps, k, s, init_scale, tuning,
                                      rngs=rngs, **dtypes)
    self.decoder = layers.LocalFilterTranspose(in_hw, in_channels, cfg.maps, k, s, init_scale,
                                               tuning, rngs=rngs, **dtypes)
    self.out_hw = tuple(ops.output_size(n, cfg.rf, cfg.stride) for n in in_hw)
    self.pool = layers.L2Pool(self.out_hw, cfg.pool_size, cfg.pool_stride, cfg.eps)
    self.pool_hw = self.pool.out_hw
    self.lcn = layers.LocalContrastNorm(self.pool_hw, cfg.lcn_size)

  def _encode_pool(self, x, grid):
    h = self.encoder(x, grid)
    return h, self.pool(h, grid)

  def _normalise(self, pooled, grid):
    return self.lcn(pooled, grid)

  def __call__(self, x_NxHxWxC, grid=spatial.DENSE):
    """The layer's output to the next layer: LCN(pool(W1^T x))."""
    return self._normalise(self._encode_pool(x_NxHxWxC, grid)[1], grid)

  def objective(self, x_NxHxWxC, grid=spatial.DENSE):
    """(output, metrics): metrics are batch means of the per-example terms."""
    h, pooled = self._encode_pool(x_NxHxWxC, grid)
    x_hat = self.decoder(h, grid)
    x = x_NxHxWxC.astype(jnp.float32)  # the objective in float32 whatever the compute dtype
    recon = grid.batch_mean(grid.example_sums(jnp.square(x_hat.astype(jnp.float32) - x)))
    sparsity = self.lam * grid.batch_mean(grid.example_sums(pooled))
    energy = grid.batch_mean(grid.example_sums(jnp.square(x)))
    metrics = {"recon": recon, "sparsity": sparsity, "loss": recon + sparsity,
               # reconstruction error relative to the input energy: comparable across layers
               "recon_rel": recon / jnp.maximum(energy, 1e-12)}
    return self._normalise(pooled, grid), metrics


class DeepAutoencoder(nnx.Module):
  """The stack of layers (3 in Le et al.: 9 sublayers). Layers are attributes layer1..layerN."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.num_layers = len(cfg.layers)
    self.image_size, self.channels = cfg.image_size, cfg.channels
    tuning = local_tuning(cfg)
    for i, (lc, g) in enumerate(zip(cfg.layers, geometry(cfg))):
      setattr(self, f"layer{i + 1}",
              AutoencoderLayer(lc, g.in_hw, g.in_channels, cfg.init_scale, tuning, rngs=rngs,
                               param_dtype=cfg.param_dtype, compute_dtype=cfg.compute_dtype))

  def layer(self, i: int) -> AutoencoderLayer:
    return getattr(self, f"layer{i + 1}")

  def _check(self, x, grid):
    if grid.tiled:  # a tile; the sharded step checks the global batch
      return
    want = (*self.image_size, self.channels)
    if x.ndim != 4 or tuple(x.shape[1:]) != want:
      raise ValueError(f"DeepAutoencoder expects images [N, {want[0]}, {want[1]}, {want[2]}], got "
                       f"{tuple(x.shape)}; resize/crop the input or change model.image_size / "
                       f"model.channels")

  def __call__(self, x_NxHxWxC, num_layers: int | None = None, grid=spatial.DENSE):
    """Outputs of every layer (LCN of the pooled responses), bottom first."""
    self._check(x_NxHxWxC, grid)
    outs, x = [], x_NxHxWxC
    for i in range(num_layers or self.num_layers):
      x = self.layer(i)(x, grid)
      outs.append(x)
    return outs


def create(cfg: ModelConfig | Config, seed: int = 0) -> DeepAutoencoder:
  """A freshly initialised model (encoder filters at unit norm if the config asks for it)."""
  cfg = cfg.model if isinstance(cfg, Config) else cfg
  model = DeepAutoencoder(cfg, rngs=nnx.Rngs(seed))
  if cfg.unit_norm_encoder:
    for i in range(model.num_layers):
      k = model.layer(i).encoder.kernel
      k[...] = unit_norm_filters(k[...])
  return model


def local_tuning(cfg: ModelConfig | Config, backend: str | None = None) -> ops.LocalTuning:
  """The local op's tuning that runs: cfg.model.local_op, "auto" / 0 filled in from `backend`'s
  (default: jax's default backend's) measured values. Where that is the Pallas kernels but a
  layer's weights on one device exceed their int32 indexing, "auto" means "einsum" instead."""
  full = cfg if isinstance(cfg, Config) else None
  mc = full.model if full else cfg
  lo = mc.local_op
  default = ops.default_tuning(backend)
  contract = default.contract if lo.contract == "auto" else lo.contract
  if lo.contract == "auto" and contract == "pallas" and not _fits_pallas(mc, full):
    contract = "einsum"
  batch = lo.pallas_batch or default.pallas.batch
  tiles = ops.PallasTiles(cols=lo.pallas_cols or _default_cols(mc, default.pallas.cols, batch),
                         warps=lo.pallas_warps or default.pallas.warps, batch=batch)
  return ops.LocalTuning(lo.block_bytes or default.block_bytes, contract, tiles)


def _default_cols(mc: ModelConfig, cols: int, batch: int) -> int:
  """The default columns per program, or 1 where one layer's tiles at `cols` columns would pass
  `ops.PALLAS_DEFAULT_TILE` elements (tiles larger than any measured spill out of registers)."""
  for lc, g in zip(mc.layers, geometry(mc)):
    shapes = ops.pallas_tile_shapes(g.in_channels, lc.maps, lc.rf, lc.stride, cols, batch)
    if max(a * b for a, b in shapes.values()) > ops.PALLAS_DEFAULT_TILE:
      return 1
  return cols


def _fits_pallas(mc: ModelConfig, full: Config | None) -> bool:
  """Every layer's weight block on one device (a rows x cols tile on a mesh) within the Pallas
  kernels' int32 indexing."""
  rows, cols = (full.mesh.rows, full.mesh.cols) if full else (1, 1)
  return all(-(-g.out_hw[0] // rows) * -(-g.out_hw[1] // cols) * lc.rf ** 2 * g.in_channels
             * lc.maps <= ops.PALLAS_MAX_ELEMENTS for lc, g in zip(mc.layers, geometry(mc)))


def resolved(cfg: Config) -> Config:
  """`cfg` with every backend default filled in (the local op's tuning): the config that runs,
  which `train.fit` saves and the experiment prints."""
  t = local_tuning(cfg)
  return cfg.replace(model=dict(local_op=dict(
      block_bytes=t.block_bytes, contract=t.contract, pallas_cols=t.pallas.cols,
      pallas_warps=t.pallas.warps, pallas_batch=t.pallas.batch)))


def unit_norm_filters(w_HoxWoxKhxKwxCxF):
  """Scale every filter (one per location and map) to unit L2 norm."""
  w = w_HoxWoxKhxKwxCxF.astype(jnp.float32)  # the norm in float32 for any weight dtype
  norm = jnp.sqrt(jnp.sum(jnp.square(w), axis=(2, 3, 4), keepdims=True))
  return (w / jnp.maximum(norm, 1e-12)).astype(w_HoxWoxKhxKwxCxF.dtype)


# ------------------------------------------------------------------------------------------------
# Parameter counting (from shapes, nothing allocated) and presets.


def count_params(cfg: ModelConfig | Config) -> dict[str, int]:
  """Connections and trainable parameters, from the geometry alone.

  encoder_connections = sum over layers of Ho*Wo*kh*kw*C*F (Le et al.'s "connections");
  trainable = encoder + untied decoder (twice that); pooling and LCN are fixed.
  """
  cfg = cfg.model if isinstance(cfg, Config) else cfg
  per_layer = [math.prod(g.encoder_shape) for g in geometry(cfg)]
  enc = sum(per_layer)
  return {"encoder_connections": enc, "trainable": 2 * enc, "per_layer_encoder": per_layer}


def _stack(n: int = 3, **kw) -> tuple[LayerConfig, ...]:
  return (LayerConfig(**kw),) * n


PRESETS = {
    # Unit tests: 3 layers, runs a step in well under a second.
    "tiny": lambda: Config(
        name="tiny",
        model=ModelConfig(image_size=(20, 20), channels=1,
                          layers=(LayerConfig(rf=5, maps=4, pool_size=3, lcn_size=3),
                                  LayerConfig(rf=4, maps=4, pool_size=3, lcn_size=3),
                                  LayerConfig(rf=4, maps=4, pool_size=3, lcn_size=3))),
        train=TrainConfig(optimizer="adam", learning_rate=1e-2, batch_size=4, steps=20,
                          log_every=5)),
    # The model `make run` trains on 2 CPU cores in minutes: 32x32 grey crops, 8 maps of 8x8
    # filters (the experiment sets its own steps, schedule and learning rate: youtube_faces.py).
    "cpu_default": lambda: Config(
        name="cpu_default",
        model=ModelConfig(image_size=(32, 32), channels=1,
                          layers=(LayerConfig(rf=8, maps=8, pool_size=3, lcn_size=5),
                                  LayerConfig(rf=8, maps=8, pool_size=3, lcn_size=5),
                                  LayerConfig(rf=6, maps=8, pool_size=3, lcn_size=5))),
        train=TrainConfig(optimizer="adam", learning_rate=3e-3, schedule="warmup_cosine",
                          warmup_steps=50, batch_size=32, steps=600, log_every=50)),
    # Le et al. (2012): 200x200x3 frames, 18x18 untied filters, 8 maps, 5x5 L2 pooling, 5x5 LCN,
    # 3 layers. Stride 1 for filters and pooling: it gives 1.217e9 encoder connections (the paper's
    # "1 billion connections") and 2.43e9 trainable parameters with the untied decoders.
    "le2012": lambda: Config(
        name="le2012",
        model=ModelConfig(image_size=(200, 200), channels=3, layers=_stack(3)),
        train=TrainConfig(optimizer="sgd", learning_rate=1e-4, batch_size=4, steps=1000)),
    # Coates et al. (2013)'s largest network (11.2e9 parameters on 64 GPUs), derived here as the
    # le2012 geometry (200x200x3, stride-1 filters and pooling, 5x5 L2 pooling and LCN) widened to
    # 20 maps of 16x16 filters: 2 * (185^2*16^2*3*20 + 166^2*16^2*20*20 + 147^2*16^2*20*20)
    # = 1.112e10 trainable parameters (the closest to 11.2e9 of rf 14-23 x maps 12-23).
    "coates2013_11b": lambda: Config(
        name="coates2013_11b",
        model=ModelConfig(image_size=(200, 200), channels=3, layers=_stack(3, rf=16, maps=20)),
        train=TrainConfig(optimizer="momentum", learning_rate=1e-4, batch_size=32, steps=1000)),
}


def preset(name: str) -> Config:
  """A documented preset config by name: tiny, cpu_default, le2012, coates2013_11b."""
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name]()
