"""Containers: `Chain`, `Parallel`, `BranchLayer`, `PairwiseFusion`, `SkipConnection`."""

from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

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


def _checked_name(owner: str, name: Any) -> str | None:
    if name is None or (isinstance(name, str) and name):
        return name
    if isinstance(name, Layer):
        raise ConfigError(f"{owner}: `name` is the container's display name, so no child can be called 'name'.")
    raise ConfigError(f"{owner}: `name` must be a non-empty string or None, got {name!r}.")


def _name_repr(name: str | None) -> str:
    return f", name={name!r}" if name is not None else ""


class _Sequence(ContainerLayer):
    """Shared storage of the containers with any number of named children.

    A container whose combining step is itself a layer (`Parallel`'s `connection`,
    `BranchLayer`'s `fusion`) has, as in Lux, two children: `layers` (the same container
    without the combining layer, holding the branches) and the combining layer.
    """

    layers: Children
    name: str | None

    def _combiner(self) -> tuple[str, Layer] | None:
        """`(key, layer)` when the outputs are combined by a layer with its own `ps`/`st` entry."""
        return None

    def children(self) -> dict[str, Layer]:
        combiner = self._combiner()
        if combiner is None:
            return dict(self.layers)
        key, layer = combiner
        return {"layers": self._rebuild(self.layers, name=None, **{key: None}), key: layer}

    def replace_children(self, children: Mapping[str, Layer]) -> Layer:
        combiner = self._combiner()
        if combiner is None:
            return self._rebuild(tuple((n, children.get(n, layer)) for n, layer in self.layers))
        key, layer = combiner
        branches = children.get("layers", self.children()["layers"])
        if type(branches) is not type(self):
            raise ConfigError(
                f"{type(self).__name__}: its `layers` child holds the branches and must stay a "
                f"{type(self).__name__}; got {branches!r}. Replace the branches inside it instead."
            )
        layers = cast(_Sequence, branches).layers
        return self._rebuild(layers, **{key: children.get(key, layer)})

    def _configuration(self) -> tuple[tuple, dict]:
        """The constructor's arguments other than the children: `(args, kwargs)`."""
        return (), {"name": self.name}

    def _rebuild(self, layers: Children, **changes: Any) -> Any:
        """The same container with other (named) children and the given changes, built by its own constructor."""
        args, kwargs = self._configuration()
        if "connection" in changes:
            args, changes = (changes.pop("connection"), *args[1:]), changes
        return type(self)(*args, **{**kwargs, **changes}, **dict(layers))

    def __getitem__(self, index: int | str | slice) -> Any:
        if isinstance(index, slice):
            return self._rebuild(self.layers[index], name=None)
        if isinstance(index, str):
            children = {**dict(self.layers), **self.children()}
            if index not in children:
                raise KeyError(
                    f"{type(self).__name__} has no child {index!r}; it has {', '.join(map(repr, children))}."
                )
            return children[index]
        return self.layers[index][1]

    def _run_each(self, inputs: tuple, ps: dict, st: dict) -> tuple[tuple, dict]:
        outputs, new_st = [], {}
        for (name, _), x in zip(self.layers, inputs):
            y, new_st[name] = self.call(name, x, ps, st)
            outputs.append(y)
        return tuple(outputs), new_st

    def _combined(self, x: Any, ps: dict, st: dict, combine: Callable | None) -> tuple[Any, dict]:
        """Runs the branches, then `combine(*outputs)` (a tuple when `None`), or the combining layer on the tuple."""
        combiner = self._combiner()
        if combiner is not None:
            key = combiner[0]
            outputs, st_layers = self.call("layers", x, ps, st)
            y, st_combiner = self.call(key, outputs, ps, st)
            return y, {"layers": st_layers, key: st_combiner}
        outputs, new_st = self._run_each(self._inputs(x), ps, st)
        return (outputs if combine is None else combine(*outputs)), new_st

    def _inputs(self, x: Any) -> tuple:
        return (x,) * len(self.layers)

    def display_name(self) -> str:
        return self.name if self.name is not None else type(self).__name__

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return (layer for _, layer in self.layers)


class Chain(_Sequence):
    """Runs its children one after the other: `y = layer_n(... layer_1(x))`.

    Args:
        *layers: children named `layer_1`, `layer_2`, ... .
        name: shown instead of `Chain` when the model is printed (Lux's `name`).
        **named_layers: children with the given names, in the given order.

    `ps` and `st`: one entry per child, `{"layer_1": ..., "layer_2": ...}` or by name.
    Index like Lux: `chain[0]`, `chain["d1"]`, and `chain[0:2]` (a Chain keeping names,
    without the `name`).

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
        >>> print(lx.Chain(lx.Dense(2, 3), lx.Dense(3, 1), name="encoder"))
        encoder(
            layer_1 = Dense(2 => 3),                      # 9 parameters
            layer_2 = Dense(3 => 1),                      # 4 parameters
        )                                                 # Total: 13 parameters, plus 0 states.
    """

    def __init__(self, *layers: Layer, name: str | None = None, **named_layers: Layer):
        self.layers = _named("Chain", layers, named_layers)
        self.name = _checked_name("Chain", name)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        new_st = {}
        for name, _ in self.layers:
            x, new_st[name] = self.call(name, x, ps, st)
        return x, new_st

    def __repr__(self) -> str:
        return f"Chain({_children_repr(self.layers)}{_name_repr(self.name)})"


class Parallel(_Sequence):
    """Runs every child on the input and combines the outputs with `connection`.

    Args:
        connection: a function, called as `connection(y_1, y_2, ...)` on the branch outputs;
            `None`, which returns them as a tuple; or a layer, called on the tuple
            `(y_1, y_2, ...)` with parameters and states of its own (as in Lux).
        *layers, **named_layers: the branches, as in `Chain`.
        name: shown instead of `Parallel` when the model is printed.

    Inputs: a tuple with one entry per branch gives each branch its own input; anything else
    is given to every branch.

    `ps` and `st`: one entry per branch; with a layer as `connection`,
    `{"layers": {<one entry per branch>}, "connection": ...}`, as in Lux.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Parallel(jnp.add, lx.Dense(2, 3), lx.Dense(2, 3))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> model(jnp.ones((5, 2)), ps, st)[0].shape
        (5, 3)
        >>> mixed = lx.Parallel(lx.WrappedFunction(jnp.hstack), lx.Dense(2, 3), lx.Dense(2, 1))
        >>> ps, st = lx.setup(jax.random.key(0), mixed)
        >>> list(ps), list(ps["layers"])
        (['layers', 'connection'], ['layer_1', 'layer_2'])
        >>> mixed(jnp.ones((5, 2)), ps, st)[0].shape
        (5, 4)
    """

    connection: Callable | None

    def __init__(self, connection: Callable | None, *layers: Layer, name: str | None = None, **named_layers: Layer):
        if not (connection is None or callable(connection)):
            raise TypeError(f"Parallel: `connection` must be a function, a layer or None, got {connection!r}.")
        self.connection = connection
        self.layers = _named("Parallel", layers, named_layers)
        self.name = _checked_name("Parallel", name)

    def _combiner(self) -> tuple[str, Layer] | None:
        return ("connection", self.connection) if isinstance(self.connection, Layer) else None

    def _configuration(self) -> tuple[tuple, dict]:
        return (self.connection,), {"name": self.name}

    def _inputs(self, x: Any) -> tuple:
        return x if isinstance(x, tuple) and len(x) == len(self.layers) else (x,) * len(self.layers)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        return self._combined(x, ps, st, self.connection)

    def display_args(self) -> list[str]:
        if self.connection is None or self._combiner() is not None:
            return []
        return [f"connection = {function_name(self.connection)}"]

    def __repr__(self) -> str:
        connection = repr(self.connection) if self._combiner() else function_name(self.connection)
        return f"Parallel({connection}, {_children_repr(self.layers)}{_name_repr(self.name)})"


class BranchLayer(_Sequence):
    """Gives the same input to every child and returns their outputs as a tuple.

    Args:
        *layers, **named_layers: the branches, as in `Chain`.
        fusion: `None` (the tuple is returned), a function called as `fusion(y_1, y_2, ...)`,
            or a layer called on the tuple `(y_1, y_2, ...)` with parameters and states of its
            own (as in Lux).
        name: shown instead of `BranchLayer` when the model is printed.

    `ps` and `st`: one entry per branch; with a layer as `fusion`,
    `{"layers": {<one entry per branch>}, "fusion": ...}`, as in Lux.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.BranchLayer(lx.Dense(2, 3), lx.Dense(2, 4))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> [y.shape for y in model(jnp.ones((5, 2)), ps, st)[0]]
        [(5, 3), (5, 4)]
        >>> fused = lx.BranchLayer(lx.Dense(2, 3), lx.Dense(2, 4), fusion=lx.WrappedFunction(jnp.hstack))
        >>> ps, st = lx.setup(jax.random.key(0), fused)
        >>> list(ps), fused(jnp.ones((5, 2)), ps, st)[0].shape
        (['layers', 'fusion'], (5, 7))
    """

    fusion: Callable | None

    def __init__(self, *layers: Layer, fusion: Callable | None = None, name: str | None = None, **named_layers: Layer):
        if not (fusion is None or callable(fusion)):
            raise TypeError(f"BranchLayer: `fusion` must be a function, a layer or None, got {fusion!r}.")
        self.fusion = fusion
        self.layers = _named("BranchLayer", layers, named_layers)
        self.name = _checked_name("BranchLayer", name)

    def _combiner(self) -> tuple[str, Layer] | None:
        return ("fusion", self.fusion) if isinstance(self.fusion, Layer) else None

    def _configuration(self) -> tuple[tuple, dict]:
        return (), {"fusion": self.fusion, "name": self.name}

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        return self._combined(x, ps, st, self.fusion)

    def display_args(self) -> list[str]:
        if self.fusion is None or self._combiner() is not None:
            return []
        return [f"fusion = {function_name(self.fusion)}"]

    def __repr__(self) -> str:
        fusion = ""
        if self.fusion is not None:
            fusion = f", fusion={self.fusion!r}" if self._combiner() else f", fusion={function_name(self.fusion)}"
        return f"BranchLayer({_children_repr(self.layers)}{fusion}{_name_repr(self.name)})"


class PairwiseFusion(_Sequence):
    """Alternates layers with a connection, feeding each layer one more input (Lux's code).

    With a tuple `x` of length `n + 1` for `n` layers: `y = x[0]`, then for each layer `i`,
    `y = connection(layer_i(y), x[i + 1])`. With any other `x`: `y = x`, then
    `y = connection(layer_i(y), x)`. This is what Lux's code and tests compute (its
    docstring shows the two arguments the other way round).

    Args:
        connection: a function of two arguments.
        *layers, **named_layers: the layers, as in `Chain`.
        name: shown instead of `PairwiseFusion` when the model is printed.

    `ps` and `st`: one entry per layer.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.PairwiseFusion(jnp.add, lx.Dense(2, 2), lx.Dense(2, 2))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> model(jnp.ones((5, 2)), ps, st)[0].shape
        (5, 2)
    """

    connection: Callable

    def __init__(self, connection: Callable, *layers: Layer, name: str | None = None, **named_layers: Layer):
        if isinstance(connection, Layer) or not callable(connection):
            raise TypeError(
                f"PairwiseFusion: `connection` must be a function of two arguments (as in Lux), got {connection!r}."
            )
        self.connection = connection
        self.layers = _named("PairwiseFusion", layers, named_layers)
        self.name = _checked_name("PairwiseFusion", name)

    def _configuration(self) -> tuple[tuple, dict]:
        return (self.connection,), {"name": self.name}

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
            y = self.connection(out, extra)
        return y, new_st

    def display_args(self) -> list[str]:
        return [f"connection = {function_name(self.connection)}"]

    def __repr__(self) -> str:
        return f"PairwiseFusion({function_name(self.connection)}, {_children_repr(self.layers)}{_name_repr(self.name)})"


class SkipConnection(ContainerLayer):
    """`y = connection(layer(x), x)`: a residual or skip connection.

    With a function `connection` this is a wrapper: `ps` and `st` are the layer's own. With
    a layer as `connection` (called on the pair `(layer(x), x)`), this is a container whose
    `ps` and `st` are `{"layers": ..., "connection": ...}`, as in Lux. `name` is shown
    instead of `SkipConnection` when the model is printed.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.SkipConnection(lx.Dense(2, 2), jnp.add)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> sorted(ps)
        ['bias', 'weight']
    """

    layers: Layer
    connection: Any
    name: str | None = None

    def __post_init__(self) -> None:
        check_layer_argument("SkipConnection", self.layers, "`layer`")
        if not callable(self.connection):
            raise TypeError(f"SkipConnection: `connection` must be a function or a layer, got {self.connection!r}.")
        self.name = _checked_name("SkipConnection", self.name)

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

    def display_name(self) -> str:
        return self.name if self.name is not None else "SkipConnection"

    def __repr__(self) -> str:
        return f"SkipConnection({self.layers!r}, {function_name(self.connection)}{_name_repr(self.name)})"
