"""lcnet compiles its own functions with the XLA options measured best for the backend: on CPU,
YNNPACK fuses dots only (its reductions make the local op's small batched multiply-sums 4-5x
slower; its dots are faster than XLA's)."""
import re

import jax
import numpy as np
import pytest

from lcnet import compiled, model, train


def ynn_fusions(text: str) -> list[str]:
  """The body of every YNNPACK fusion in a compiled module's text."""
  bodies = []
  for line in text.splitlines():
    if '"kind":"__ynn_fusion"' in line:
      name = re.search(r"calls=(%[\w.-]+)", line).group(1)
      body = text[text.index(f"\n{name} ") + 1:]
      bodies.append(body[:body.index("\n}")])
  return bodies


@pytest.mark.skipif(compiled.options("cpu") is None,
                    reason="this jaxlib has no YNNPACK fusion types: there is nothing to choose")
def test_the_train_step_and_evaluation_give_ynnpack_only_their_dots_on_cpu():
  cfg = model.preset("tiny")
  state = train.abstract_state(cfg)
  x = jax.ShapeDtypeStruct((cfg.train.batch_size, *cfg.model.image_size, 1), np.float32)
  grads = train.make_layer_grads(cfg)
  # a compilation that hands YNNPACK reductions (as jaxlib's default pipeline does) is seen...
  reduce = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
  control = ynn_fusions(jax.jit(grads, compiler_options=reduce).lower(state.params, x).compile()
                        .as_text())
  assert any(" reduce(" in b for b in control)
  # ...lcnet's own compilations hand it their dots and nothing else
  for fn in (lambda: train.make_train_step(cfg).lower(state, x),
             lambda: compiled.jit(grads).lower(state.params, x)):
    ours = ynn_fusions(fn().compile().as_text())
    assert ours and all(" dot(" in b and " reduce(" not in b for b in ours), ours


def test_options_are_only_for_backends_that_know_them():
  assert compiled.options("gpu") is None
  assert compiled.options("no_such_backend") is None


def test_the_first_options_this_jaxlib_knows_are_taken(monkeypatch):
  """A jaxlib that does not know the preferred options gets the next ones, not its defaults."""
  monkeypatch.setitem(compiled.OPTIONS, "cpu", [{"xla_no_such_option_anywhere": True},
                                                {"xla_cpu_experimental_ynn_fusion_type": ""}])
  compiled._supported.cache_clear()
  try:
    assert compiled.options("cpu") == {"xla_cpu_experimental_ynn_fusion_type": ""}
    monkeypatch.setitem(compiled.OPTIONS, "cpu", [{"xla_no_such_option_anywhere": True}])
    compiled._supported.cache_clear()
    assert compiled.options("cpu") is None
  finally:
    monkeypatch.undo()
    compiled._supported.cache_clear()
