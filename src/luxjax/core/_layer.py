"""The layer contract: `Layer`, `ContainerLayer` and `WrapperLayer`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from ._errors import LayerError, NotALayerError, StructureError
from ._keypath import KeyPath


class Layer:
    """Base class of every layer: an immutable description, never holding arrays.

    Subclasses are turned into frozen dataclasses automatically, so declaring the
    configuration as annotated fields is all a layer needs. Layers are hashable and equal
    by value, so they can be static arguments of `jax.jit`; they are also registered as
    pytrees with no leaves, so passing a model through `jax.jit` as an ordinary argument
    works too (a new model value retraces).

    A layer implements three methods:

    - `init_params(key) -> dict`: the trainable arrays (default `{}`).
    - `init_state(key) -> dict`: everything else (default `{}`).
    - `__call__(x, ps, st) -> (y, st)`: the forward pass, returning the new state.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> class Scale(lx.Layer):
        ...     dims: int
        ...     def init_params(self, key):
        ...         return {"scale": jnp.ones((self.dims,))}
        ...     def __call__(self, x, ps, st):
        ...         return x * ps["scale"], st
        >>> model = Scale(3)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> model(jnp.arange(3.0), ps, st)[0]
        Array([0., 1., 2.], dtype=float32)
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, repr=False, eq=True)(cls)
        jax.tree_util.register_static(cls)

    def init_params(self, key: jax.Array) -> dict:
        """Returns the parameter tree of this layer."""
        del key
        return {}

    def init_state(self, key: jax.Array) -> dict:
        """Returns the state tree of this layer."""
        del key
        return {}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__(x, ps, st).")

    # -- structure: leaves have no children ------------------------------------------------
    is_wrapper = False

    def children(self) -> dict[str, Layer]:
        """The named child layers, in order. `ps` has one entry per child (wrappers: none)."""
        return {}

    def replace_children(self, children: Mapping[str, Layer]) -> Layer:
        """Returns a copy with the given children replaced (used by model surgery)."""
        if children:
            return dataclasses.replace(self, **children)
        return self

    def display_args(self) -> list[str]:
        """Extra configuration lines shown after the children in `print(model)`."""
        return []

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"

    def __str__(self) -> str:
        from ._display import display

        return display(self)


def _layer_fields(layer: Layer) -> dict[str, Layer]:
    return {
        f.name: getattr(layer, f.name) for f in dataclasses.fields(layer) if isinstance(getattr(layer, f.name), Layer)
    }


class ContainerLayer(Layer):
    """A layer with named children; its `ps` and `st` have one entry per child.

    By default the children are the fields that hold layers, in declaration order, and
    `init_params`/`init_state` give each child its own key. A container may override
    `init_params` to hold parameters of its own beside its children's.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> class Twice(lx.ContainerLayer):
        ...     first: lx.Layer
        ...     second: lx.Layer
        ...     def __call__(self, x, ps, st):
        ...         y, st_first = self.first(x, ps["first"], st["first"])
        ...         y, st_second = self.second(y, ps["second"], st["second"])
        ...         return y, {"first": st_first, "second": st_second}
        >>> model = Twice(lx.Dense(2, 3), lx.Dense(3, 1))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> list(ps)
        ['first', 'second']
    """

    def children(self) -> dict[str, Layer]:
        return _layer_fields(self)

    def init_params(self, key: jax.Array) -> dict:
        children = self.children()
        keys = jax.random.split(key, len(children)) if children else []
        return {name: child.init_params(k) for (name, child), k in zip(children.items(), keys)}

    def init_state(self, key: jax.Array) -> dict:
        children = self.children()
        keys = jax.random.split(key, len(children)) if children else []
        return {name: child.init_state(k) for (name, child), k in zip(children.items(), keys)}


class WrapperLayer(Layer):
    """A layer around exactly one child whose `ps` and `st` are the child's own.

    The wrapped layer is the one field that holds a layer. Paths (in `layer_map`, debug
    mode and errors) go through a wrapper without adding a level.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> class Doubled(lx.WrapperLayer):
        ...     layer: lx.Layer
        ...     def __call__(self, x, ps, st):
        ...         y, st = self.layer(x, ps, st)
        ...         return 2 * y, st
        >>> model = Doubled(lx.Dense(2, 3))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> sorted(ps)
        ['bias', 'weight']
    """

    is_wrapper = True

    def children(self) -> dict[str, Layer]:
        children = _layer_fields(self)
        if len(children) != 1:
            raise NotALayerError(
                f"{type(self).__name__} is a WrapperLayer and must hold exactly one layer field, "
                f"found {len(children)}: {', '.join(children) or 'none'}."
            )
        return children

    @property
    def wrapped(self) -> Layer:
        """The wrapped child layer."""
        return next(iter(self.children().values()))

    def init_params(self, key: jax.Array) -> dict:
        return self.wrapped.init_params(key)

    def init_state(self, key: jax.Array) -> dict:
        return self.wrapped.init_state(key)


def check_layer_argument(owner: str, value: Any, what: str = "child") -> Layer:
    """Returns `value` if it is a layer, else raises an error naming it and the fix."""
    if isinstance(value, Layer):
        return value
    hint = " Wrap plain functions as `WrappedFunction(fn)`." if callable(value) else ""
    raise NotALayerError(f"{owner}: {what} must be a luxjax Layer, got {value!r} of type {type(value).__name__}.{hint}")


def call_child(owner: Layer, name: str, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
    """Runs `owner`'s child `name` on its entries of `ps`/`st`, locating any layer error."""
    layer = owner.children()[name]
    for tree, what in ((ps, "parameters"), (st, "states")):
        if not isinstance(tree, Mapping) or name not in tree:
            found = ", ".join(map(repr, tree)) if isinstance(tree, Mapping) else type(tree).__name__
            raise StructureError(owner, f"{what} have no entry {name!r} for child {layer!r}; found {found}.")
    return call_located(layer, KeyPath(name), x, ps[name], st[name], scope=name)


def call_located(layer: Layer, path: KeyPath, x: Any, ps: Any, st: Any, *, scope: str) -> tuple[Any, dict]:
    """Calls `layer` inside a named scope; a `LayerError` raised inside learns `path`."""
    with jax.named_scope(scope):
        try:
            return layer(x, ps, st)
        except LayerError as error:
            error.path = path + error.path
            raise
