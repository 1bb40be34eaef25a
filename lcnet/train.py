"""Training: optax optimisers, a pure jitted `train_step(state, batch) -> (state, metrics)`, and
`fit`, the loop that notebooks and experiments call (joint or greedy layer-wise).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lcnet import compiled, profiling, spatial
from lcnet import data as data_lib
from lcnet import mesh as mesh_lib
from lcnet import model as model_lib
from lcnet.config import Config, TrainConfig
from lcnet.loader import Loader
from lcnet.mesh import BatchSource
from lcnet.runlog import RunLog

logger = logging.getLogger(__name__)  # not `log`: that is fit's metrics callback

Params = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree (jit, shard and checkpoint it whole)."""
  step: jax.Array
  params: Params  # {'layer1': {'encoder': {'kernel': w1}, 'decoder': {'kernel': w2}}, ...}
  opt_state: Any  # {'layerN': optax state of that layer's params}
  rng: jax.Array

  def __repr__(self) -> str:
    leaves = jax.tree.leaves(self.params)
    n = sum(x.size for x in leaves)
    shapes = {k: {m: tuple(v["kernel"].shape) for m, v in layer.items()}
              for k, layer in self.params.items()}
    sh = getattr(leaves[0], "sharding", None) if leaves else None
    return (f"TrainState(step={int(self.step) if not isinstance(self.step, jax.core.Tracer) else '?'}, "
            f"params={n:,} ({n * 4 / 2**20:.1f} MiB f32), kernels={shapes}, sharding={sh})")


def make_optimizer(tc: TrainConfig, total_steps: int | None = None,
                   layer: int = 0) -> optax.GradientTransformation:
  """The optax chain named by the config, with its learning-rate schedule, for layer `layer`
  (from 0): the rate times that layer's `train.layer_lr_scale` factor. Optimiser states do not
  depend on the rate, so any layer's chain can initialise every layer's state."""
  steps = total_steps or tc.steps
  peak = tc.learning_rate * (tc.layer_lr_scale[layer] if tc.layer_lr_scale else 1.0)
  lr: Any = peak
  if tc.schedule == "cosine":
    lr = optax.cosine_decay_schedule(peak, max(steps, 1))
  elif tc.schedule == "warmup_cosine":
    warm = min(tc.warmup_steps, max(steps - 1, 0))
    lr = optax.warmup_cosine_decay_schedule(0.0, peak, warm, max(steps, warm + 1))
  if tc.optimizer == "sgd":
    return optax.sgd(lr)
  if tc.optimizer == "momentum":
    return optax.sgd(lr, momentum=tc.momentum)
  if tc.optimizer == "adagrad":
    return optax.adagrad(lr)
  return optax.adam(lr)


def stages(cfg: Config) -> list[tuple[tuple[int, ...], int]]:
  """(active layers, steps) per stage: one joint stage, or one stage per layer (greedy: by
  train.stage_steps, else train.steps split evenly, the remainder to the last layers)."""
  n, total = len(cfg.model.layers), cfg.train.steps
  if cfg.train.mode == "joint":
    return [(tuple(range(n)), total)]
  per = cfg.train.stage_steps or [total // n + (i >= n - total % n) for i in range(n)]
  return [((i,), k) for i, k in enumerate(per) if k > 0]


def graphdef(cfg: Config):
  """The static structure of the model (no arrays allocated)."""
  return nnx.graphdef(nnx.eval_shape(lambda: model_lib.create(cfg)))


def _new_state(cfg: Config, seed: int) -> TrainState:
  params = nnx.to_pure_dict(nnx.state(model_lib.create(cfg, seed)))
  if cfg.mesh.size > 1:
    params = mesh_lib.pad_kernels(params, cfg)
  tx = make_optimizer(cfg.train, stages(cfg)[0][1])
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=init_opt_state(tx, params),
                    rng=jax.random.key(seed))


def init_opt_state(tx: optax.GradientTransformation, params: Params) -> dict[str, Any]:
  """One optimiser state per layer: the step updates layer by layer (see `make_train_step`)."""
  return {name: tx.init(layer) for name, layer in params.items()}


def abstract_state(cfg: Config, seed: int | None = None) -> TrainState:
  """The TrainState's shapes, dtypes and (on a mesh) shardings, with nothing allocated.

  The target for restoring a checkpoint onto cfg.mesh, and for ahead-of-time compilation.
  """
  seed = cfg.train.seed if seed is None else seed
  shapes = jax.eval_shape(lambda: _new_state(cfg, seed))
  mesh = mesh_lib.mesh_for(cfg)
  if mesh is None:
    return shapes
  shardings = mesh_lib.state_shardings(shapes, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def init_state(cfg: Config, seed: int | None = None) -> TrainState:
  """A fresh TrainState: params from `model.create`, optimiser state for the first stage.

  On a mesh (cfg.mesh) the state is born sharded: one jit whose outputs are the state's
  shardings, so no device ever holds a whole kernel. Its values equal the unsharded init,
  padded to the canvas.
  """
  seed = cfg.train.seed if seed is None else seed
  mesh = mesh_lib.mesh_for(cfg)
  target = abstract_state(cfg, seed)
  nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(target)
               if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key))
  if nbytes > LEAFWISE_INIT_BYTES:
    return _init_leafwise(cfg, seed, target, mesh is not None)
  if mesh is None:
    return _new_state(cfg, seed)
  shardings = jax.tree.map(lambda x: x.sharding, target)
  return jax.jit(lambda: _new_state(cfg, seed), out_shardings=shardings)()


# States above this size are initialised one array per jit: XLA drops the other arrays' random
# draws as dead code, so the peak host/device memory is the state plus one kernel's temporaries
# instead of several times the state (a single jit of the le2012 state on 8 CPU devices needed
# more than 24 GiB for its 9.7 GB of parameters).
LEAFWISE_INIT_BYTES = 1 << 30


def _init_leafwise(cfg: Config, seed: int, target: TrainState, sharded: bool) -> TrainState:
  leaves, treedef = jax.tree.flatten(target)
  out = []
  for i, t in enumerate(leaves):
    fn = lambda i=i: jax.tree.leaves(_new_state(cfg, seed))[i]
    out.append(jax.jit(fn, out_shardings=t.sharding if sharded else None)())
    jax.block_until_ready(out[-1])
  return jax.tree.unflatten(treedef, out)


def project_layer(layer: Params, cfg: Config) -> Params:
  """Unit-norm encoder filters of one layer's params (if the config asks for it)."""
  if not cfg.model.unit_norm_encoder:
    return layer
  return {**layer, "encoder": {"kernel": model_lib.unit_norm_filters(layer["encoder"]["kernel"])}}


def layer_graphdefs(cfg: Config) -> list:
  """The static structure of each AutoencoderLayer (no arrays allocated)."""
  m = nnx.eval_shape(lambda: model_lib.create(cfg))
  return [nnx.graphdef(m.layer(i)) for i in range(m.num_layers)]


def make_layer_fns(cfg: Config) -> tuple[list[Callable], list[Callable]]:
  """Per layer: `objective(params_i, x) -> (loss, (output, metrics))` and
  `forward(params_i, x) -> output`, for cfg.mesh (under shard_map with a Tiled grid on a mesh)."""
  gdefs = layer_graphdefs(cfg)
  mesh = mesh_lib.mesh_for(cfg)
  grid = spatial.DENSE if mesh is None else mesh_lib.grid(mesh)

  def objective(gdef, params, x):
    out, metrics = nnx.merge(gdef, params).objective(x, grid)
    return metrics["loss"], (out, metrics)

  def forward(gdef, params, x):
    return nnx.merge(gdef, params)(x, grid)

  objs = [functools.partial(objective, g) for g in gdefs]
  fwds = [functools.partial(forward, g) for g in gdefs]
  if mesh is None:
    return objs, fwds
  w_spec, x_spec = mesh_lib.spec(mesh, "rows", "cols"), mesh_lib.spec(mesh, "data", "rows", "cols")

  def sharded(fn, out_specs):
    def body(params, x):
      if grid.data_axis is not None:  # every data slice uses the kernels: grads psum over data
        params = jax.lax.pcast(params, grid.data_axis, to="varying")
      return fn(params, x)
    return jax.shard_map(body, mesh=mesh, in_specs=(w_spec, x_spec), out_specs=out_specs)

  return ([sharded(f, (P(), (x_spec, P()))) for f in objs], [sharded(f, x_spec) for f in fwds])


def make_layer_grads(cfg: Config, active: tuple[int, ...] | None = None) -> Callable:
  """`layer_grads(params, x) -> (grads, metrics, outputs)`: everything a train step computes
  before its optimiser updates, for cfg.mesh.

  Layers run bottom-up: layer i's objective and the gradient of its own kernels (its input is a
  constant: the layers below get nothing from it), then layer i + 1 on layer i's output. Frozen
  layers (greedy mode) only run forward: no gradients exist for them, so a greedy stage needs
  memory for one layer's gradients, not the model's. `outputs[i]` is layer i's output (a canvas
  on a mesh); `grads` and `metrics` have one entry per active layer.
  """
  n = len(cfg.model.layers)
  active = tuple(range(n)) if active is None else tuple(active)
  objectives, forwards = make_layer_fns(cfg)

  def layer_grads(params: Params, x):
    grads, metrics, outputs = {}, {}, []
    for i in range(max(active) + 1):
      name = f"layer{i + 1}"
      if i in active:
        (_, (x, metrics[name])), grads[name] = jax.value_and_grad(objectives[i], has_aux=True)(
            params[name], x)
      else:
        x = forwards[i](params[name], x)
      outputs.append(x)
    return grads, metrics, outputs

  return layer_grads


def make_train_step(cfg: Config, active: tuple[int, ...] | None = None,
                    total_steps: int | None = None) -> Callable:
  """A jitted, state-donating `train_step(state, batch) -> (state, metrics)` for these layers:
  `make_layer_grads`, then each active layer's optimiser update (and unit-norm projection)."""
  layer_grads = make_layer_grads(cfg, active)
  tx = {f"layer{i + 1}": make_optimizer(cfg.train, total_steps, i)
        for i in range(len(cfg.model.layers))}

  def train_step(state: TrainState, x):
    grads, metrics, _ = layer_grads(state.params, x)
    params, opt_state = dict(state.params), dict(state.opt_state)
    for name, g in grads.items():
      updates, opt_state[name] = tx[name].update(g, opt_state[name], params[name])
      params[name] = project_layer(optax.apply_updates(params[name], updates), cfg)
    total = sum(m["loss"] for m in metrics.values())
    sq = sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads))
    metrics = {**metrics, "total": total, "grad_norm": jnp.sqrt(sq)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  mesh = mesh_lib.mesh_for(cfg)
  if mesh is None:
    return compiled.jit(train_step, donate_argnums=0)
  shardings = jax.tree.map(lambda x: x.sharding, abstract_state(cfg))
  return compiled.jit(train_step, donate_argnums=0,
                 in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
                 out_shardings=(shardings, NamedSharding(mesh, P())))


@dataclasses.dataclass
class FitResult:
  state: TrainState
  history: list[dict[str, float]]
  config: Config
  stopped: str | None = None  # why training stopped early (SIGTERM/SIGINT), and how to resume
  resumed_from: int | None = None  # the checkpoint step training continued from
  input_wait_s: float = 0.0  # time the loop waited for its batches (`lcnet.loader`)

  def model(self):
    """The trained model as an NNX module (for notebooks)."""
    return nnx.merge(graphdef(self.config), self.state.params)


def _scalars(metrics) -> dict[str, float]:
  flat = {}
  for k, v in metrics.items():
    if isinstance(v, dict):
      flat.update({f"{k}/{kk}": float(vv) for kk, vv in v.items()})
    else:
      flat[k] = float(v)
  return flat


def _check_finite(step: int, flat: dict[str, float]):
  bad = [k for k, v in flat.items() if not math.isfinite(v)]
  if bad:
    raise FloatingPointError(
        f"training diverged at step {step}: {', '.join(bad)} = "
        f"{', '.join(str(flat[k]) for k in bad)}. Lower train.learning_rate (now the step's "
        f"update was too large), use a warmup schedule, or check the input for NaN/Inf.")


def fit(cfg: Config, data: BatchSource | None = None, workdir: str | None = None,
        state: TrainState | None = None,
        log: Callable[[int, dict[str, float]], None] | None = None,
        resume: bool = True) -> FitResult:
  """Train `cfg` on `data` (default: the embedded corpus) from `state` (fresh if None).

  With a workdir: writes workdir/config.json, appends workdir/metrics.jsonl (the same scalars go
  to TensorBoard event files, `lcnet.tblog`), and checkpoints the state into workdir/checkpoints
  (`lcnet.checkpoint`: every `train.save_every` steps and at the end, asynchronously). A workdir
  that holds checkpoints is resumed from the latest readable one
  (unless `resume=False` or a `state` is given); the data of step t is a function of t, so the
  resumed run sees what an uninterrupted one would; a run whose checkpoints cannot fit on the
  run directory's filesystem is refused before it trains (`checkpoint.NotEnoughDiskError`,
  naming the space it needs). SIGTERM/SIGINT commits a checkpoint after
  the current step and returns early with `stopped` saying how to resume.

  Metrics of step t are fetched only after step t+1 is dispatched, so the device never waits for
  logging; a non-finite loss stops training with a FloatingPointError naming the step.
  """
  cfg = model_lib.resolved(cfg)  # the config that runs, saved as config.json
  if data is None:
    data = data_lib.default_source(cfg)
  place, (lo, hi) = mesh_lib.batch_placer(cfg), mesh_lib.process_slice(cfg)
  place(data_lib.host_slice(data, 0, lo, hi))  # checks the data's shape before anything compiles
  if cfg.train.profile_steps and not workdir:
    raise ValueError(f"train.profile_steps={cfg.train.profile_steps} writes its trace into the "
                     f"run directory: give fit() a workdir, or set train.profile_steps=()")
  prof = profiling.StepProfiler(workdir, cfg.train.profile_steps)
  runlog, ckpt, resumed = None, None, None
  if workdir:
    from lcnet import checkpoint
    ckpt = checkpoint.Checkpointer(workdir, cfg, every=cfg.train.save_every or None,
                                   keep=cfg.train.keep_checkpoints)
    if state is None and resume and ckpt.latest_step() is not None:
      state = ckpt.restore(abstract_state(cfg))
      resumed = int(state.step)
    try:  # a run whose checkpoints cannot fit is refused before it trains
      ckpt.check_room(abstract_state(cfg) if state is None else state,
                      0 if state is None else int(state.step), cfg.train.steps)
    except checkpoint.NotEnoughDiskError:
      ckpt.close()
      raise
    runlog = RunLog(workdir, cfg, resumed)
  state = init_state(cfg) if state is None else state
  history: list[dict[str, float]] = []
  step0, start = int(state.step), 0
  pending, stopped = None, None
  loader = None
  t0 = time.perf_counter()
  waited = {"wait_s": 0.0, "t": t0}

  def flush(pending):
    step, metrics, stage = pending
    flat = _scalars(jax.device_get(metrics))  # one transfer for all the step's scalars
    _check_finite(step, flat)
    if step % cfg.train.log_every == 0 or step == cfg.train.steps - 1:
      now = time.perf_counter()  # the share of the time since the last log spent waiting for data
      share = (loader.wait_s - waited["wait_s"]) / max(now - waited["t"], 1e-9)
      waited.update(wait_s=loader.wait_s, t=now)
      flat.update(step=step, stage=stage, seconds=now - t0, input_wait=share)
      history.append(flat)
      if runlog:
        runlog.write(step, flat)
      if log:
        log(step, flat)

  try:
    loader = Loader(data, step0, cfg.train.steps, lo, hi, place, workers=cfg.train.loader_workers,
                    prefetch=cfg.train.prefetch)
    for si, (active, n) in enumerate(stages(cfg)):
      end = start + n
      if step0 >= end:
        start = end
        continue
      if cfg.train.mode == "greedy" and step0 == start and si > 0:  # fresh optimiser per stage
        state = state.replace(opt_state=init_opt_state(make_optimizer(cfg.train, n), state.params))
      train_step = make_train_step(cfg, active, n)
      for step in range(max(step0, start), end):
        try:
          batch = next(loader)
        except Exception:
          if not (ckpt and ckpt.stopped_by_signal()):
            raise
          # the loader's workers died of the signal that asks the run to stop: stop here
          logger.warning(
              "the loader failed after a stop signal; taken as that stop", exc_info=True)
          if pending is not None:
            flush(pending)
          pending, stopped = None, ckpt.stop(int(state.step), state)
          break
        with prof.step(step):
          state, metrics = train_step(state, batch)
        prof.finish(step, metrics)
        if pending is not None:
          flush(pending)
        pending = (step, metrics, si)
        if ckpt:
          ckpt.save(step + 1, state)
          if ckpt.should_stop(step + 1):
            flush(pending)
            pending, stopped = None, ckpt.stop(step + 1, state)
            break
      start = end
      if stopped:
        break
    if pending is not None:
      flush(pending)
    if ckpt and not stopped:
      ckpt.save(int(state.step), state, force=True)
  finally:
    if loader:
      loader.close()
    prof.close(state)
    if runlog:
      runlog.close()
    if ckpt:
      ckpt.close()
  return FitResult(state=state, history=history, config=cfg, stopped=stopped,
                   resumed_from=resumed, input_wait_s=loader.wait_s)
