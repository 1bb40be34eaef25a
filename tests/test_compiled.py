"""lcnet compiles its own functions with the XLA options measured best for the backend: on CPU,
no YNNPACK fusions (they make the local op's small batched contractions 4-5x slower)."""
import jax
import numpy as np
import pytest

from lcnet import compiled, model, train


def ynn_fusions(text: str) -> int:
  return text.count('"kind":"__ynn_fusion"')


@pytest.mark.skipif(compiled.options("cpu") is None,
                    reason="this jaxlib has no YNNPACK fusions: there is nothing to switch off")
def test_the_train_step_and_evaluation_compile_without_ynnpack_on_cpu():
  cfg = model.preset("tiny")
  state = train.abstract_state(cfg)
  x = jax.ShapeDtypeStruct((cfg.train.batch_size, *cfg.model.image_size, 1), np.float32)
  grads = train.make_layer_grads(cfg)
  # jaxlib's default pipeline fuses some of the step's contractions with YNNPACK...
  assert ynn_fusions(jax.jit(grads).lower(state.params, x).compile().as_text()) > 0
  # ...lcnet's own compilations do not
  assert ynn_fusions(train.make_train_step(cfg).lower(state, x).compile().as_text()) == 0
  assert ynn_fusions(compiled.jit(grads).lower(state.params, x).compile().as_text()) == 0


def test_options_are_only_for_backends_that_know_them():
  assert compiled.options("gpu") is None
  assert compiled.options("no_such_backend") is None
