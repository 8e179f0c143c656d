"""`StatefulLuxLayer`: a model bound to its `ps` and `st`, called as a plain function `f(x)`."""

from __future__ import annotations

from typing import Any

import jax

from ._errors import NotALayerError
from ._layer import Layer


@jax.tree_util.register_pytree_with_keys_class
class StatefulLuxLayer:
    """A model bound to its parameters and states, called as `f(x)` (Lux's `StatefulLuxLayer`).

    For code that wants a plain function of the input: closures in a loss, derivatives with
    respect to the input (physics-informed losses, `jax.jacfwd`, `jax.hessian`, `jax.grad` of
    `jax.grad`), ODE right-hand sides. It is not a layer but a pytree whose leaves are the
    arrays of `ps` and `st` (the model is static), so it can be passed through `jax.jit`,
    `jax.vmap` and `jax.grad` like any tree: `jax.grad` with respect to it gives the
    parameters' gradients in its `ps`.

    Args:
        model: a luxjax layer.
        ps: its parameters (from `luxjax.setup`).
        st: its states.

    `f(x)` runs `model(x, ps, st)` and returns only the output; `f(x, ps)` uses other
    parameters (as in Lux). It never changes `f`: a model whose states change when it runs
    (`BatchNorm` or `Dropout` in training mode) should be run as `y, f = f.apply(x)`, which
    returns a copy holding the new states. (Lux's version stores the new state in place; in
    JAX that would leak traced values out of `jax.jit` and `jax.grad`.)

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Chain(lx.Dense(1, 8, jnp.tanh), lx.Dense(8, 1))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> f = lx.StatefulLuxLayer(model, ps, st)
        >>> def loss(f):
        ...     u = lambda t: f(jnp.reshape(t, (1, 1)))[0, 0]  # a scalar function of a scalar
        ...     return jax.grad(jax.grad(u))(0.5) ** 2 + u(0.0) ** 2  # nested AD through the model
        >>> grads = jax.grad(loss)(f)                          # gradients w.r.t. the bound parameters
        >>> grads.ps["layer_1"]["weight"].shape
        (8, 1)
    """

    __slots__ = ("model", "ps", "st")
    model: Layer
    ps: Any
    st: Any

    def __init__(self, model: Layer, ps: Any, st: Any):
        if not isinstance(model, Layer):
            raise NotALayerError(
                f"StatefulLuxLayer: `model` must be a luxjax Layer, got {model!r} of type {type(model).__name__}."
            )
        self.model = model
        self.ps = ps
        self.st = st

    def __call__(self, x: Any, ps: Any = None) -> Any:
        return self.model(x, self.ps if ps is None else ps, self.st)[0]

    def apply(self, x: Any, ps: Any = None) -> tuple[Any, StatefulLuxLayer]:
        """Runs the model; returns `(y, f)` with `f` a copy holding the new states.

        Example:
            >>> import jax, jax.numpy as jnp, luxjax as lx
            >>> model = lx.BatchNorm(2)
            >>> f = lx.StatefulLuxLayer(model, *lx.setup(jax.random.key(0), model))
            >>> y, f = f.apply(jnp.array([[0.0, 1.0], [2.0, 3.0]]))
            >>> f.st["running_mean"]
            Array([0.1, 0.2], dtype=float32)
        """
        y, st = self.model(x, self.ps if ps is None else ps, self.st)
        return y, StatefulLuxLayer(self.model, self.ps, st)

    def tree_flatten_with_keys(self) -> tuple[tuple, Layer]:
        return ((jax.tree_util.GetAttrKey("ps"), self.ps), (jax.tree_util.GetAttrKey("st"), self.st)), self.model

    @classmethod
    def tree_unflatten(cls, model: Layer, children: Any) -> StatefulLuxLayer:
        layer = object.__new__(cls)
        layer.model, (layer.ps, layer.st) = model, children
        return layer

    def __repr__(self) -> str:
        return f"StatefulLuxLayer({self.model!r})"
