"""`Maxout`: the elementwise maximum of several layers' outputs."""

from typing import Any

import jax.numpy as jnp

from ..core import ConfigError, Layer
from ._containers import _checked_name, _children_repr, _name_repr, _named, _Sequence


class Maxout(_Sequence):
    """Runs every child on the input and returns the elementwise maximum of the outputs, as Lux's `Maxout`.

    Args:
        *layers: children named `layer_1`, `layer_2`, ... (at least one); they must give
            outputs of the same shape.
        name: shown instead of `Maxout` when the model is printed, as on the other containers.
        **named_layers: children with the given names, in the given order.

    Lux's `Maxout(f, n)` (n copies of `f()`) is `Maxout(*(f() for _ in range(n)))`.

    Inputs: what the children take. Returns the elementwise maximum of their outputs.

    `ps` and `st`: one entry per child.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Maxout(lx.Dense(2, 3), lx.Dense(2, 3))
        >>> model
        Maxout(Dense(2 => 3), Dense(2 => 3))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> y, st = model(jnp.ones((4, 2)), ps, st)
        >>> y.shape, list(ps)
        ((4, 3), ['layer_1', 'layer_2'])
    """

    def __init__(self, *layers: Layer, name: str | None = None, **named_layers: Layer):
        self.layers = _named("Maxout", layers, named_layers)
        self.name = _checked_name("Maxout", name)
        if not self.layers:
            raise ConfigError("Maxout: give at least one layer.")

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        outputs, new_st = self._run_each((x,) * len(self.layers), ps, st)
        y = outputs[0]
        for other in outputs[1:]:
            y = jnp.maximum(y, other)
        return y, new_st

    def __repr__(self) -> str:
        return f"Maxout({_children_repr(self.layers)}{_name_repr(self.name)})"
