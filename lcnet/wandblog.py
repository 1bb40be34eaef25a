"""An optional Weights & Biases writer with `tblog.Writer`'s interface (the experiment's
`--config.log.wandb=True`; `pip install wandb`). The run's id is kept in the run directory, so a
resumed run continues the same W&B run; `WANDB_MODE=offline` writes it under RUN/wandb for a
later `wandb sync`. Only process 0 writes."""
from __future__ import annotations

import os
import secrets

import numpy as np


class Writer:
  def __init__(self, workdir: str, config: dict, project: str = "lcnet", name: str | None = None):
    try:
      import wandb
    except ImportError:
      raise ImportError("log.wandb=True needs W&B: pip install wandb (or set log.wandb=False)") from None
    self._wandb = wandb
    os.makedirs(workdir, exist_ok=True)
    id_file = os.path.join(workdir, "wandb_id")
    if os.path.exists(id_file):
      with open(id_file) as f:
        run_id = f.read().strip()
    else:
      run_id = secrets.token_hex(4)
      with open(id_file, "w") as f:
        f.write(run_id)
    self.run = wandb.init(project=project, name=name or os.path.basename(os.path.abspath(workdir)),
                          id=run_id, resume="allow", dir=workdir, config=config)

  def scalars(self, step: int, values: dict[str, float]):
    self.run.log({k: float(v) for k, v in values.items()}, step=step)

  def images(self, step: int, images: dict[str, np.ndarray]):
    from lcnet.tblog import unit_range
    self.run.log({k: self._wandb.Image(unit_range(v)) for k, v in images.items()}, step=step)

  def histograms(self, step: int, values: dict[str, np.ndarray]):
    self.run.log({k: self._wandb.Histogram(np.asarray(v, np.float64).ravel()) for k, v in
                  values.items()}, step=step)

  def summary(self, values: dict):
    self.run.summary.update(values)

  def close(self):
    self.run.finish()
