"""Configs as data: frozen dataclasses for the model and its training, validated on construction.

Library code only sees these types (never a dict), so a typo or an impossible geometry fails at
once, before anything is compiled or allocated. `to_dict` / `from_dict` round-trip through JSON.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

OPTIMIZERS = ("sgd", "momentum", "adagrad", "adam")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
MODES = ("joint", "greedy")
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class LayerConfig:
  """One of the three layers: untied local filter -> L2 pool -> LCN (Le et al. 2012, Fig. 1)."""
  rf: int = 18  # receptive field (kh = kw) of the untied local filters
  stride: int = 1  # stride of the local filters
  maps: int = 8  # filters per output location
  pool_size: int = 5  # L2 pooling window (per map)
  pool_stride: int = 1
  lcn_size: int = 5  # Gaussian window of local contrast normalisation
  lam: float = 0.1  # weight of the pooled sparsity term
  eps: float = 1e-2  # inside sqrt(eps + H (W1^T x)^2)
  in_channels: int | None = None  # optional check against the layer below


@dataclass(frozen=True)
class LayerGeometry:
  """Shapes derived from a config: input grid, filter output grid, pooled grid."""
  in_hw: tuple[int, int]
  in_channels: int
  out_hw: tuple[int, int]  # after local filtering
  pool_hw: tuple[int, int]  # after L2 pooling (= after LCN)
  maps: int
  rf: int

  @property
  def encoder_shape(self) -> tuple[int, ...]:
    """w1[Ho, Wo, kh, kw, C, F]; the untied decoder w2 has the same shape."""
    return (*self.out_hw, self.rf, self.rf, self.in_channels, self.maps)


def pallas_tiles_problem(cols, warps, batch, unset_ok: bool = False) -> str | None:
  """What is wrong with these Pallas tile settings (`ops.PallasTiles`), or None; with
  `unset_ok`, 0 (the default) is allowed for each."""
  def pow2(v):
    return isinstance(v, int) and v >= 1 and not v & (v - 1)
  for name, v, ok, rule in [("cols", cols, isinstance(cols, int) and cols >= 1, "an int >= 1"),
                            ("warps", warps, pow2(warps) and warps <= 32, "a power of two <= 32"),
                            ("batch", batch, pow2(batch) and batch >= 16,
                             "a power of two >= 16 (a Triton tile)")]:
    if not ok and not (unset_ok and v == 0):
      return f"{name} must be {rule}{' (0: the default)' if unset_ok else ''}, got {v!r}"
  return None


@dataclass(frozen=True)
class LocalOpConfig:
  """How the untied local op runs: speed and summation order, never the result. `block_bytes`:
  patch bytes per block of output rows; `contract`: "broadcast", "einsum" (batched matmuls) or
  "pallas" (fused kernels, `lcnet.pallas_local`; opt-in: interpret mode, for tests, on CPUs);
  `pallas_cols`, `pallas_warps`, `pallas_batch`: how the Pallas kernels tile (`ops.PallasTiles`:
  adjacent columns, Triton warps and most examples per program).
  0 / "auto": the backend's measured default (`lcnet.ops.DEFAULT_TUNING`); `model.resolved(cfg)`
  fills them in, and that config is what `train.fit` saves and the experiment prints."""
  block_bytes: int = 0
  contract: str = "auto"
  pallas_cols: int = 0
  pallas_warps: int = 0
  pallas_batch: int = 0

  def __post_init__(self):
    if self.contract not in ("auto", "broadcast", "einsum", "pallas"):
      raise ValueError(f"model.local_op.contract={self.contract!r} is not one of auto, broadcast, "
                       f"einsum, pallas")
    if not isinstance(self.block_bytes, int) or self.block_bytes < 0:
      raise ValueError(f"model.local_op.block_bytes must be an int >= 0 (0: the backend's "
                       f"default), got {self.block_bytes!r}")
    if problem := pallas_tiles_problem(self.pallas_cols, self.pallas_warps, self.pallas_batch,
                                       unset_ok=True):
      raise ValueError(f"model.local_op.pallas_{problem}")


@dataclass(frozen=True)
class ModelConfig:
  image_size: tuple[int, int] = (200, 200)
  channels: int = 3
  layers: tuple[LayerConfig, ...] = (LayerConfig(),) * 3
  unit_norm_encoder: bool = True  # project each encoder filter to unit norm after every update
  init_scale: float = 1.0  # initial weights' std = init_scale / sqrt(fan_in) (the encoder's is
  # moot when unit_norm_encoder rescales its filters; then it scales the decoder only)
  whiten_input: bool = False  # inputs whitened (`data.whiten`) in training and evaluation
  local_op: LocalOpConfig = field(default_factory=LocalOpConfig)
  # Mixed precision. param_dtype: the stored weights (and so the optimiser state and checkpoints).
  # compute_dtype: the batch and the local op's inputs, weights and outputs; every product of the
  # local op accumulates in float32, and pooling, LCN and the objective run in float32.
  param_dtype: str = "float32"
  compute_dtype: str = "float32"

  def __post_init__(self):
    for name in ("param_dtype", "compute_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"model.{name}={getattr(self, name)!r} is not one of {DTYPES}")
    object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
    if isinstance(self.local_op, dict):
      object.__setattr__(self, "local_op", LocalOpConfig(**self.local_op))
    object.__setattr__(self, "layers", tuple(
        LayerConfig(**l) if isinstance(l, dict) else l for l in self.layers))
    geometry(self)  # raises ValueError on an impossible configuration


def _positive(name: str, value, where: str):
  if not isinstance(value, (int, float)) or value <= 0:
    raise ValueError(f"{where}: {name} must be positive, got {value!r}")


def geometry(cfg: ModelConfig) -> tuple[LayerGeometry, ...]:
  """Per-layer shapes; ValueError naming the layer and the fix if any size does not fit."""
  if len(cfg.image_size) != 2:
    raise ValueError(f"model.image_size must be (height, width), got {cfg.image_size!r}")
  for n, v in (("image height", cfg.image_size[0]), ("image width", cfg.image_size[1]),
               ("channels", cfg.channels)):
    _positive(n, v, "model")
  if not cfg.layers:
    raise ValueError("model.layers is empty: give at least one LayerConfig")
  hw, ch, out = cfg.image_size, cfg.channels, []
  for i, l in enumerate(cfg.layers):
    where = f"layer {i + 1}"
    for name in ("rf", "stride", "maps", "pool_size", "pool_stride", "lcn_size", "eps"):
      _positive(name, getattr(l, name), where)
    if l.lam < 0:
      raise ValueError(f"{where}: lam must be >= 0, got {l.lam}")
    if l.in_channels is not None and l.in_channels != ch:
      raise ValueError(f"{where}: in_channels={l.in_channels} but its input has {ch} channels "
                       f"({'the image' if i == 0 else f'maps of layer {i}'}); set in_channels={ch} "
                       f"or change the maps of the layer below")
    if l.stride > min(hw) or l.pool_stride > min(hw):
      raise ValueError(f"{where}: stride {l.stride} / pool_stride {l.pool_stride} exceeds its "
                       f"{hw[0]}x{hw[1]} input, leaving no output beyond one window; use a stride "
                       f"<= {min(hw)}")
    if l.rf > min(hw):
      raise ValueError(f"{where}: receptive field {l.rf} is larger than its {hw[0]}x{hw[1]} input; "
                       f"use rf <= {min(hw)} or a larger image / smaller pooling below")
    o = tuple((n - l.rf) // l.stride + 1 for n in hw)
    if l.pool_size > min(o):
      raise ValueError(f"{where}: pool_size {l.pool_size} is larger than the {o[0]}x{o[1]} filter "
                       f"output (input {hw[0]}x{hw[1]}, rf {l.rf}, stride {l.stride}); use "
                       f"pool_size <= {min(o)}, a smaller stride or rf, or a larger input")
    p = tuple((n - l.pool_size) // l.pool_stride + 1 for n in o)
    out.append(LayerGeometry(hw, ch, o, p, l.maps, l.rf))
    hw, ch = p, l.maps
  return tuple(out)


@dataclass(frozen=True)
class TrainConfig:
  mode: str = "joint"  # "joint": all layers' objectives at once; "greedy": layer by layer
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  schedule: str = "constant"
  warmup_steps: int = 0
  momentum: float = 0.9
  batch_size: int = 16
  steps: int = 1000  # total; in greedy mode split over the layers by stage_steps (default: evenly)
  stage_steps: tuple[int, ...] = ()  # greedy mode: steps per layer, summing to `steps`
  # Each layer's learning rate is learning_rate times its factor here, in either mode (): 1 for
  # every layer. Why: Adam moves every coordinate by about the learning rate whatever the layer,
  # while a unit-norm filter's coordinates shrink as 1 / sqrt(fan-in) (8x8x1 = 64 in layer 1,
  # 8x8x16 = 1024 in the default's layer 2), so one rate is a 4x larger relative step there.
  layer_lr_scale: tuple[float, ...] = ()
  seed: int = 0
  log_every: int = 10
  save_every: int = 0  # checkpoint every N steps when fit() has a workdir (0: only at the end)
  keep_checkpoints: int = 3  # the newest K checkpoints are kept
  profile_steps: tuple[int, ...] = ()  # (start, stop): a jax.profiler trace of those steps into
  # RUN/profile (`lcnet.profiling`); fit() needs a workdir for it
  loader_workers: int = 0  # Grain worker processes cutting crops (`lcnet.loader`); 0: a thread
  prefetch: int = 2  # batches placed on the devices ahead of the step that needs them

  def __post_init__(self):
    for name, allowed in (("mode", MODES), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"train.{name}={getattr(self, name)!r} is not one of {allowed}")
    for name in ("learning_rate", "batch_size", "steps", "log_every", "keep_checkpoints"):
      _positive(name, getattr(self, name), "train")
    if self.save_every < 0:
      raise ValueError(f"train.save_every must be >= 0 (0: save only at the end), got "
                       f"{self.save_every}")
    for name in ("loader_workers", "prefetch"):
      if getattr(self, name) < 0:
        raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
    if self.warmup_steps < 0:
      raise ValueError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
    object.__setattr__(self, "stage_steps", tuple(int(n) for n in self.stage_steps))
    object.__setattr__(self, "profile_steps", tuple(int(n) for n in self.profile_steps))
    object.__setattr__(self, "layer_lr_scale", tuple(float(v) for v in self.layer_lr_scale))
    if not all(0 < v < float("inf") for v in self.layer_lr_scale):
      raise ValueError(f"train.layer_lr_scale={self.layer_lr_scale} must be positive finite "
                       f"factors, one per layer (e.g. 1,0.25,0.333); () for 1 in every layer")
    if self.profile_steps and (len(self.profile_steps) != 2
                               or not 0 <= self.profile_steps[0] < self.profile_steps[1]):
      raise ValueError(f"train.profile_steps={self.profile_steps} must be (start, stop) with "
                       f"0 <= start < stop, e.g. (10, 15) for steps 10..14; () for no trace")
    if self.stage_steps:
      if self.mode != "greedy":
        raise ValueError(f"train.stage_steps={self.stage_steps} is for greedy training; set "
                         f"train.mode='greedy' or leave stage_steps empty")
      if min(self.stage_steps) <= 0 or sum(self.stage_steps) != self.steps:
        raise ValueError(f"train.stage_steps={self.stage_steps} must be positive and sum to "
                         f"train.steps={self.steps}; set train.steps={sum(self.stage_steps)}")


@dataclass(frozen=True)
class MeshConfig:
  """Devices along each mesh axis: data parallel x spatial rows x spatial cols (Coates et al.).

  1x1x1 (the default) runs unsharded on one device. Any other shape runs the same train step
  under `jax.shard_map`: the batch split over `data`, every layer's grids tiled over rows x cols.
  """
  data: int = 1
  rows: int = 1
  cols: int = 1

  @property
  def size(self) -> int:
    return self.data * self.rows * self.cols

  @property
  def shape(self) -> tuple[int, int, int]:
    return (self.data, self.rows, self.cols)

  def __post_init__(self):
    for name in ("data", "rows", "cols"):
      v = getattr(self, name)
      if not isinstance(v, int) or v < 1:
        raise ValueError(f"mesh.{name} must be a positive int, got {v!r}")


def check_mesh(model: ModelConfig, train: TrainConfig, mesh: MeshConfig):
  """ValueError, before anything compiles, if the mesh cannot split this batch.

  Any grid splits over any rows x cols: tiles are ceil(n / parts) with zero padding (devices past
  a small grid's end hold only padding)."""
  if train.batch_size % mesh.data:
    ok = [d for d in range(1, train.batch_size + 1) if train.batch_size % d == 0]
    raise ValueError(f"train.batch_size={train.batch_size} does not split over mesh.data="
                     f"{mesh.data} devices; use mesh.data in {ok} or a batch_size that is a "
                     f"multiple of {mesh.data}")


def replace(cfg, **kw):
  """`dataclasses.replace`, nested: a dict value for a dataclass field replaces only the keys it
  names (`replace(model_cfg, layers=...)`, `replace(cfg, model=dict(image_size=(23, 21)))`)."""
  fields = [f.name for f in dataclasses.fields(cfg)]
  for name, value in kw.items():
    if name not in fields:
      raise ValueError(f"{type(cfg).__name__} has no field {name!r}; its fields: {fields}")
    current = getattr(cfg, name)
    if isinstance(value, dict) and dataclasses.is_dataclass(current):
      kw[name] = replace(current, **value)
  return dataclasses.replace(cfg, **kw)


@dataclass(frozen=True)
class Config:
  name: str = "custom"
  model: ModelConfig = field(default_factory=ModelConfig)
  train: TrainConfig = field(default_factory=TrainConfig)
  mesh: MeshConfig = field(default_factory=MeshConfig)

  def __post_init__(self):
    if isinstance(self.mesh, dict):
      object.__setattr__(self, "mesh", MeshConfig(**self.mesh))
    check_mesh(self.model, self.train, self.mesh)
    if self.train.stage_steps and len(self.train.stage_steps) != len(self.model.layers):
      raise ValueError(f"train.stage_steps has {len(self.train.stage_steps)} entries for "
                       f"{len(self.model.layers)} layers; give one per layer")
    if self.train.layer_lr_scale and len(self.train.layer_lr_scale) != len(self.model.layers):
      raise ValueError(f"train.layer_lr_scale has {len(self.train.layer_lr_scale)} entries for "
                       f"{len(self.model.layers)} layers; give one per layer, or () for 1 in each")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Config:
    m = dict(d.get("model", {}))
    m["layers"] = tuple(LayerConfig(**l) for l in m.get("layers", ()))
    return cls(name=d.get("name", "custom"), model=ModelConfig(**m),
               train=TrainConfig(**d.get("train", {})), mesh=MeshConfig(**d.get("mesh", {})))

  def replace(self, **kw) -> Config:
    """A copy with some fields changed; a dict for a section changes only the keys it names:
    `cfg.replace(train=dict(steps=10), mesh=dict(rows=2))`. Validated like a new config."""
    return replace(self, **kw)

  def __str__(self) -> str:
    lo = self.model.local_op
    tiles = (f"{lo.pallas_cols} columns, {lo.pallas_warps} warps and up to {lo.pallas_batch} "
             f"examples per program, " if lo.contract == "pallas" else "")
    lines = [f"Config {self.name!r}", f"  train: {self.train}",
             f"  mesh: data {self.mesh.data} x rows {self.mesh.rows} x cols {self.mesh.cols}",
             f"  model: image {self.model.image_size} x {self.model.channels} ch, "
             f"unit_norm_encoder={self.model.unit_norm_encoder}, local_op: "
             f"{lo.contract}, {lo.block_bytes:,} B blocks, {tiles}"
             f"params {self.model.param_dtype}, compute {self.model.compute_dtype}"]
    for i, (l, g) in enumerate(zip(self.model.layers, geometry(self.model))):
      lines.append(f"    layer {i + 1}: {g.in_hw}x{g.in_channels} -> local rf{l.rf} s{l.stride} "
                   f"x{l.maps} -> {g.out_hw} -> L2 pool {l.pool_size}/{l.pool_stride} -> {g.pool_hw}"
                   f" -> LCN {l.lcn_size}; lam={l.lam}")
    return "\n".join(lines)
