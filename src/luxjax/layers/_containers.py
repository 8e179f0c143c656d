"""Containers: `Chain`, `Parallel`, `BranchLayer`, `PairwiseFusion`, `SkipConnection`."""

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax

from ..core import ConfigError, ContainerLayer, Layer, ShapeError, assembled, check_layer_argument, function_name

Children = tuple[tuple[str, Layer], ...]


def _named(owner: str, layers: tuple, named: Mapping[str, Any]) -> Children:
    if layers and named:
        raise TypeError(f"{owner}: give the child layers either all positionally or all by name, not both.")
    items = list(named.items()) if named else [(f"layer_{i + 1}", layer) for i, layer in enumerate(layers)]
    for name, _ in items:
        if not name or "." in name or name.isdigit():
            raise ConfigError(
                f"{owner}: child names are paths' parts, so they must be non-empty, without '.', and not all "
                f"digits (a digit part is a block index); got {name!r}."
            )
    return tuple((name, check_layer_argument(owner, layer, f"child {name!r}")) for name, layer in items)


def _children_repr(items: Children) -> str:
    auto = all(name == f"layer_{i + 1}" for i, (name, _) in enumerate(items))
    return ", ".join(repr(layer) if auto else f"{name}={layer!r}" for name, layer in items)


class _Sequence(ContainerLayer):
    """Shared storage of the containers with any number of named children."""

    layers: Children

    def children(self) -> dict[str, Layer]:
        return dict(self.layers)

    def replace_children(self, children: Mapping[str, Layer]) -> Layer:
        return self._with_layers(tuple((n, children.get(n, layer)) for n, layer in self.layers))

    def _configuration(self) -> tuple[tuple, dict]:
        """The constructor's arguments other than the children: `(args, kwargs)`."""
        return (), {}

    def _with_layers(self, layers: Children) -> Any:
        """The same container with other (named) children, built by its own constructor."""
        args, kwargs = self._configuration()
        return type(self)(*args, **kwargs, **dict(layers))

    def __getitem__(self, index: int | str | slice) -> Any:
        if isinstance(index, slice):
            return self._with_layers(self.layers[index])
        if isinstance(index, str):
            children = self.children()
            if index not in children:
                raise KeyError(
                    f"{type(self).__name__} has no child {index!r}; it has {', '.join(map(repr, children))}."
                )
            return children[index]
        return self.layers[index][1]

    def _run_each(self, inputs: tuple, ps: dict, st: dict) -> tuple[list, dict]:
        outputs, new_st = [], {}
        for (name, _), x in zip(self.layers, inputs):
            y, new_st[name] = self.call(name, x, ps, st)
            outputs.append(y)
        return outputs, new_st

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return (layer for _, layer in self.layers)


class Chain(_Sequence):
    """Runs its children one after the other: `y = layer_n(... layer_1(x))`.

    Args:
        *layers: children named `layer_1`, `layer_2`, ... .
        **named_layers: children with the given names, in the given order.

    `ps` and `st`: one entry per child, `{"layer_1": ..., "layer_2": ...}` or by name.
    Index like Lux: `chain[0]`, `chain["d1"]`, and `chain[0:2]` (a Chain keeping names).

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Chain(d1=lx.Dense(2, 4, jnp.tanh), d2=lx.Dense(4, 2))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> list(ps)
        ['d1', 'd2']
        >>> model(jnp.ones((3, 2)), ps, st)[0].shape
        (3, 2)
        >>> model["d2"]
        Dense(4 => 2)
    """

    def __init__(self, *layers: Layer, **named_layers: Layer):
        self.layers = _named("Chain", layers, named_layers)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        new_st = {}
        for name, _ in self.layers:
            x, new_st[name] = self.call(name, x, ps, st)
        return x, new_st

    def __repr__(self) -> str:
        return f"Chain({_children_repr(self.layers)})"


class Parallel(_Sequence):
    """Runs every child on the input and combines the outputs with `connection`.

    Args:
        connection: called as `connection(y_1, y_2, ...)` on the branch outputs; `None`
            returns them as a tuple.
        *layers, **named_layers: the branches, as in `Chain`.

    Inputs: a tuple with one entry per branch gives each branch its own input; anything else
    is given to every branch.

    `ps` and `st`: one entry per branch.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Parallel(jnp.add, lx.Dense(2, 3), lx.Dense(2, 3))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> model(jnp.ones((5, 2)), ps, st)[0].shape
        (5, 3)
    """

    connection: Callable | None

    def __init__(self, connection: Callable | None, *layers: Layer, **named_layers: Layer):
        if isinstance(connection, Layer) or not (connection is None or callable(connection)):
            raise TypeError(
                f"Parallel: `connection` must be a function or None, got {connection!r}. To combine the "
                "branches with a layer, use `Chain(Parallel(None, ...), layer)`."
            )
        self.connection = connection
        self.layers = _named("Parallel", layers, named_layers)

    def _configuration(self) -> tuple[tuple, dict]:
        return (self.connection,), {}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        split = isinstance(x, tuple) and len(x) == len(self.layers)
        outputs, new_st = self._run_each(x if split else (x,) * len(self.layers), ps, st)
        y = tuple(outputs) if self.connection is None else self.connection(*outputs)
        return y, new_st

    def display_args(self) -> list[str]:
        return [f"connection = {function_name(self.connection)}"] if self.connection is not None else []

    def __repr__(self) -> str:
        return f"Parallel({function_name(self.connection)}, {_children_repr(self.layers)})"


class BranchLayer(_Sequence):
    """Gives the same input to every child and returns their outputs as a tuple.

    With `fusion`, returns `fusion(y_1, y_2, ...)` instead.

    `ps` and `st`: one entry per branch.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.BranchLayer(lx.Dense(2, 3), lx.Dense(2, 4))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> [y.shape for y in model(jnp.ones((5, 2)), ps, st)[0]]
        [(5, 3), (5, 4)]
    """

    fusion: Callable | None

    def __init__(self, *layers: Layer, fusion: Callable | None = None, **named_layers: Layer):
        self.fusion = fusion
        self.layers = _named("BranchLayer", layers, named_layers)

    def _configuration(self) -> tuple[tuple, dict]:
        return (), {"fusion": self.fusion}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        outputs, new_st = self._run_each((x,) * len(self.layers), ps, st)
        return (tuple(outputs) if self.fusion is None else self.fusion(*outputs)), new_st

    def display_args(self) -> list[str]:
        return [f"fusion = {function_name(self.fusion)}"] if self.fusion is not None else []

    def __repr__(self) -> str:
        fusion = f", fusion={function_name(self.fusion)}" if self.fusion is not None else ""
        return f"BranchLayer({_children_repr(self.layers)}{fusion})"


class PairwiseFusion(_Sequence):
    """Alternates layers with a connection, feeding each layer one more input (Lux's semantics).

    With a tuple `x` of length `n + 1` for `n` layers: `y = x[0]`, then for each layer `i`,
    `y = connection(x[i + 1], layer_i(y))`. With any other `x`: `y = x`, then
    `y = connection(x, layer_i(y))`.

    `ps` and `st`: one entry per layer.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.PairwiseFusion(jnp.add, lx.Dense(2, 2), lx.Dense(2, 2))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> model(jnp.ones((5, 2)), ps, st)[0].shape
        (5, 2)
    """

    connection: Callable

    def __init__(self, connection: Callable, *layers: Layer, **named_layers: Layer):
        if isinstance(connection, Layer) or not callable(connection):
            raise TypeError(f"PairwiseFusion: `connection` must be a function, got {connection!r}.")
        self.connection = connection
        self.layers = _named("PairwiseFusion", layers, named_layers)

    def _configuration(self) -> tuple[tuple, dict]:
        return (self.connection,), {}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        n = len(self.layers)
        if isinstance(x, tuple):
            if len(x) != n + 1:
                raise ShapeError(
                    self, f"a tuple input needs {n + 1} entries (one more than the {n} layers), got {len(x)}."
                )
            y, extras = x[0], x[1:]
        else:
            y, extras = x, (x,) * n
        new_st = {}
        for (name, _), extra in zip(self.layers, extras):
            out, new_st[name] = self.call(name, y, ps, st)
            y = self.connection(extra, out)
        return y, new_st

    def display_args(self) -> list[str]:
        return [f"connection = {function_name(self.connection)}"]

    def __repr__(self) -> str:
        return f"PairwiseFusion({function_name(self.connection)}, {_children_repr(self.layers)})"


class SkipConnection(ContainerLayer):
    """`y = connection(layer(x), x)`: a residual or skip connection.

    With a function `connection` this is a wrapper: `ps` and `st` are the layer's own. With
    a layer as `connection` (called on the pair `(layer(x), x)`), this is a container whose
    `ps` and `st` are `{"layers": ..., "connection": ...}`, as in Lux.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.SkipConnection(lx.Dense(2, 2), jnp.add)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> sorted(ps)
        ['bias', 'weight']
    """

    layers: Layer
    connection: Any

    def __post_init__(self) -> None:
        check_layer_argument("SkipConnection", self.layers, "`layer`")
        if not callable(self.connection):
            raise TypeError(f"SkipConnection: `connection` must be a function or a layer, got {self.connection!r}.")

    @property
    def is_wrapper(self) -> bool:
        return not isinstance(self.connection, Layer)

    @assembled
    def init_params(self, key: jax.Array) -> dict:
        return self.layers.init_params(key) if self.is_wrapper else super().init_params(key)

    @assembled
    def init_state(self, key: jax.Array) -> dict:
        return self.layers.init_state(key) if self.is_wrapper else super().init_state(key)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        if self.is_wrapper:
            y, st = self.layers(x, ps, st)
            return self.connection(y, x), st
        y, st_layers = self.call("layers", x, ps, st)
        z, st_connection = self.call("connection", (y, x), ps, st)
        return z, {"layers": st_layers, "connection": st_connection}

    def display_args(self) -> list[str]:
        return [f"connection = {function_name(self.connection)}"] if self.is_wrapper else []

    def __repr__(self) -> str:
        return f"SkipConnection({self.layers!r}, {function_name(self.connection)})"
