"""A finished run, for notebooks and evaluation: `load_run(run_dir)` gives its config, parameters
(from its checkpoints, the one parameter format), model and chosen face unit; `Run.respond`
scores any images with that unit."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from flax import nnx

from lcnet import checkpoint, units
from lcnet import model as model_lib
from lcnet.config import Config


@dataclasses.dataclass
class Run:
  """A trained run: its config, parameters, model, and chosen unit (None before evaluation)."""
  config: Config
  params: dict
  net: Any
  unit: dict | None

  def respond(self, images, unit: dict | None = None) -> np.ndarray:
    """The unit's activation for any batch of images (uint8 or float, [N, H, W(, C)], any size),
    resized and standardised as in training. Multiply by unit["sign"] for "face-ness"."""
    unit = unit or self.unit
    if unit is None:
      raise ValueError("this run has no chosen unit (metrics.json with face_unit); pass `unit`")
    m = self.config.model
    x = units.normalise(images, m.image_size, m.channels, m.whiten_input)
    return units.unit_response(self.net, unit, x)


def model_params(net) -> dict:
  """The parameters of an NNX model as a nested dict of arrays (a TrainState's `params`)."""
  return nnx.to_pure_dict(nnx.state(net))


def model_from_params(cfg: Config, params: dict):
  """An NNX model with these parameters (built abstractly, so nothing is allocated twice)."""
  gdef = nnx.graphdef(nnx.eval_shape(lambda: model_lib.create(cfg)))
  return nnx.merge(gdef, params)


def load_run(run_dir: str, step: int | None = None) -> Run:
  """config.json, the parameters (of the latest checkpoint, or `step`, on the first local
  device) and metrics.json's face_unit."""
  if not os.path.isdir(run_dir):
    raise FileNotFoundError(f"no run directory {run_dir!r} (a workdir of train.fit or "
                            f"python -m experiments.youtube_faces)")
  with open(os.path.join(run_dir, "config.json")) as f:
    cfg = Config.from_dict(json.load(f))
  params = checkpoint.load_params(run_dir, step)
  unit = None
  mpath = os.path.join(run_dir, "metrics.json")
  if os.path.exists(mpath):
    with open(mpath) as f:
      unit = json.load(f).get("face_unit")
  return Run(cfg, params, model_from_params(cfg, params), unit)
