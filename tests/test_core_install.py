"""`pip install lcnet` without extras (run by `make test-core` in a fresh venv holding only the core
dependencies): the library imports and trains, and the extras really are absent there."""
import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.core_install

# modules of the extras only (scipy is not one: jax itself needs it)
EXTRAS = ("PIL", "imageio_ffmpeg", "skvideo", "skimage", "matplotlib", "ml_collections", "tqdm",
          "tensorboard")


def test_the_extras_are_not_installed():
  assert [m for m in EXTRAS if importlib.util.find_spec(m)] == []


def test_the_core_imports_and_trains_without_the_extras():
  from lcnet import checkpoint, data, mesh, model, ops, train  # noqa: F401
  cfg = model.preset("tiny").replace(train=dict(steps=3, log_every=1))
  rng = np.random.default_rng(0)
  src = data.CropSource([rng.random((40, 44, 1), np.float32) for _ in range(3)],
                        cfg.model.image_size[0], cfg.train.batch_size)
  res = train.fit(cfg, src)
  assert int(res.state.step) == 3 and all(np.isfinite(h["total"]) for h in res.history)
