"""The layer contract: `Layer`, `ContainerLayer` and `WrapperLayer`."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, cast, dataclass_transform

import jax
import numpy as np

from ._display import display
from ._errors import ConfigError, LayerError, NotALayerError, StructureError
from ._keypath import KeyPath
from ._walk import assembled, fit_problem

# Ids of the layers whose constructor is running: only they may assign their fields.
_BUILDING: set[int] = set()
# The indices of the blocks being run by the enclosing stacks (`luxjax.Stacked`), outermost first.
_BLOCK_INDICES: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar("luxjax_blocks", default=())


@contextlib.contextmanager
def running_block(index: Any) -> Iterator[None]:
    """Marks the code inside as running block `index` (an int or a traced int) of a stack."""
    token = _BLOCK_INDICES.set((*_BLOCK_INDICES.get(), index))
    try:
        yield
    finally:
        _BLOCK_INDICES.reset(token)


def block_indices() -> tuple[Any, ...]:
    """The indices of the blocks the enclosing stacks are running, outermost first (debug mode reads them)."""
    return _BLOCK_INDICES.get()


def field(*, converter: Callable[[Any], Any] | None = None, **kwargs: Any) -> Any:
    """A layer field, as `dataclasses.field`, with an optional `converter` applied on assignment.

    The converter runs on the value given to the constructor (and on any assignment in
    `__post_init__`), so the field always holds the converted value: a list given for a
    tuple field is stored as a tuple, and layers stay hashable.

    Example:
        >>> import luxjax as lx
        >>> class Widths(lx.Layer):
        ...     widths: tuple[int, ...] = lx.core.field(converter=tuple)
        >>> Widths([1, 2]).widths
        (1, 2)
    """
    metadata = dict(kwargs.pop("metadata", None) or {})
    if converter is not None:
        metadata["converter"] = converter
    return dataclasses.field(metadata=metadata, **kwargs)


class _LayerMeta(type):
    """Opens a layer's fields for assignment while its constructor runs, and closes them after."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        layer = object.__new__(cls)
        _BUILDING.add(id(layer))
        try:
            layer.__init__(*args, **kwargs)
        finally:
            _BUILDING.discard(id(layer))
        for name in getattr(cls, "_flags", ()):
            value = getattr(layer, name)
            if not isinstance(value, bool | np.bool_):
                raise ConfigError(f"{cls.__name__}: `{name}` must be True or False, got {value!r}.")
        return layer


# Whether a layer's call is running: only the outermost call checks the trees it is given.
_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("luxjax_in_call", default=False)


_NO_STATE: Any = object()


def check_fit(fn: str, layer: Any, ps: Any, st: Any) -> None:
    """Raises a `StructureError` if `ps`/`st` do not fit `layer` (structure, shapes, dtype kinds).

    `fn` names the function that was given the trees (empty for a layer's own call). The answer
    is cached per layer and tree signature, so checking at every call costs a dictionary look-up.
    """
    problem = fit_problem(layer, ps, st)
    if problem:
        raise StructureError(layer, f"{fn}: {problem}" if fn else problem)


def _scoped(call: Callable) -> Callable:
    """The layer's `__call__` in a named scope; the outermost call first checks `ps` and `st` against the layer."""

    @functools.wraps(call)
    def scoped(self: Layer, x: Any, ps: Any, st: Any = _NO_STATE) -> tuple[Any, Any]:
        if st is _NO_STATE:
            raise TypeError(
                f"{self!r} was called without `st`: call it as `y, st = model(x, ps, st)` "
                "with the states `luxjax.setup` returned (`{}` for a layer without states)."
            )
        with jax.named_scope(type(self).__name__):
            if _IN_CALL.get():
                return call(self, x, ps, st)
            check_fit("", self, ps, st)
            token = _IN_CALL.set(True)
            try:
                return call(self, x, ps, st)
            finally:
                _IN_CALL.reset(token)

    return scoped


@dataclass_transform(field_specifiers=(dataclasses.field, field))
class Layer(metaclass=_LayerMeta):
    """Base class of every layer: an immutable description, never holding arrays.

    Subclasses are turned into dataclasses automatically, so declaring the configuration as
    annotated fields is all a layer needs. A constructor (the generated one, `__post_init__`
    or an `__init__` of its own) assigns the fields as usual, e.g. to normalise an argument;
    afterwards the layer is immutable. Layers are hashable and equal by value, so they can be
    static arguments of `jax.jit`; they are also registered as pytrees with no leaves, so
    passing a model through `jax.jit` as an ordinary argument works too (a new model value
    retraces). Every `__call__` runs inside `jax.named_scope(<class name>)`, so profiles and
    HLO name the layer.

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

    _converters: ClassVar[dict[str, Callable[[Any], Any]]] = {}
    _flags: ClassVar[tuple[str, ...]] = ()  # the fields declared `bool`, checked after construction

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            cls.__call__ = _scoped(cls.__dict__["__call__"])
        dataclasses.dataclass(repr=False, eq=True, unsafe_hash=True)(cls)
        fields = dataclasses.fields(cast(Any, cls))
        cls._converters = {f.name: f.metadata["converter"] for f in fields if "converter" in f.metadata}
        cls._flags = tuple(f.name for f in fields if f.type in (bool, "bool"))
        jax.tree_util.register_static(cls)

    def __setattr__(self, name: str, value: Any) -> None:
        if id(self) not in _BUILDING:
            raise dataclasses.FrozenInstanceError(
                f"{type(self).__name__} is immutable; make a changed copy: `dataclasses.replace(layer, {name}=...)`."
            )
        converter = self._converters.get(name)
        object.__setattr__(self, name, value if converter is None else converter(value))

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"{type(self).__name__} is immutable; cannot delete `{name}`.")

    def init_params(self, key: jax.Array) -> dict:
        """Returns the parameter tree of this layer."""
        del key
        return {}

    def init_state(self, key: jax.Array) -> dict:
        """Returns the state tree of this layer."""
        del key
        return {}

    def __call__(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        raise NotImplementedError(f"{type(self).__name__} does not implement __call__(x, ps, st).")

    # -- structure: leaves have no children ------------------------------------------------
    @property
    def is_wrapper(self) -> bool:
        """Whether this layer shares its `ps`/`st` (and its path) with its one child."""
        return False

    def children(self) -> dict[str, Layer]:
        """The named child layers, in order. `ps` has one entry per child (wrappers: none)."""
        return {}

    def frozen_parameters(self) -> int:
        """How many scalars of this layer's own state are frozen parameters (`FrozenLayer`, `LoRA`).

        The display's total uses it to show the fraction of parameters that train.
        """
        return 0

    def copies(self) -> int:
        """How many copies of its child this layer runs (`Stacked`: its depth); the display multiplies counts by it."""
        return 1

    def replace_children(self, children: Mapping[str, Layer]) -> Layer:
        """Returns a copy with the given children replaced (used by model surgery)."""
        return dataclasses.replace(cast(Any, self), **children) if children else self

    def display_args(self) -> list[str]:
        """Extra configuration lines shown after the children in `print(model)`."""
        return []

    def display_name(self) -> str:
        """The name `print(model)` shows for this layer: its class name, or the `name` a container was given."""
        return type(self).__name__

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(cast(Any, self)))
        return f"{type(self).__name__}({fields})"

    def __str__(self) -> str:
        return display(self)


def _layer_fields(layer: Layer) -> dict[str, Layer]:
    values = ((f.name, getattr(layer, f.name)) for f in dataclasses.fields(cast(Any, layer)))
    return {name: value for name, value in values if isinstance(value, Layer)}


class ContainerLayer(Layer):
    """A layer with named children; its `ps` and `st` have one entry per child.

    By default the children are the fields that hold layers, in declaration order, and
    `init_params`/`init_state` give each child its own key. A container may override
    `init_params` to hold parameters of its own beside its children's. Run a child with
    `self.call(name, x, ps, st)`: it picks the child's entries of `ps` and `st`, names the
    child in profiles, and an error raised inside names the child's full path.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> class Twice(lx.ContainerLayer):
        ...     first: lx.Layer
        ...     second: lx.Layer
        ...     def __call__(self, x, ps, st):
        ...         y, st_first = self.call("first", x, ps, st)
        ...         y, st_second = self.call("second", y, ps, st)
        ...         return y, {"first": st_first, "second": st_second}
        >>> model = Twice(lx.Dense(2, 3), lx.Dense(3, 1))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> list(ps)
        ['first', 'second']
        >>> model(jnp.ones((4, 3)), ps, st)
        Traceback (most recent call last):
        ...
        luxjax.ShapeError: Dense(2 => 3) at first: expected input with last axis 2, got shape (4, 3).
    """

    def children(self) -> dict[str, Layer]:
        return _layer_fields(self)

    @assembled
    def init_params(self, key: jax.Array) -> dict:
        children = self.children()
        keys = jax.random.split(key, len(children)) if children else []
        return {name: child.init_params(k) for (name, child), k in zip(children.items(), keys)}

    @assembled
    def init_state(self, key: jax.Array) -> dict:
        children = self.children()
        keys = jax.random.split(key, len(children)) if children else []
        return {name: child.init_state(k) for (name, child), k in zip(children.items(), keys)}

    def call(self, name: str, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        """Runs the child `name` on `x` with its entries of `ps` and `st`; returns `(y, child_st)`.

        A `LayerError` raised inside learns the child's name as the first key of its path.
        """
        layer = self.children()[name]
        for tree, what in ((ps, "parameters"), (st, "states")):
            if not isinstance(tree, Mapping) or name not in tree:
                found = ", ".join(map(repr, tree)) if isinstance(tree, Mapping) else type(tree).__name__
                raise StructureError(self, f"{what} have no entry {name!r} for child {layer!r}; found {found}.")
        with jax.named_scope(name):
            try:
                return layer(x, ps[name], st[name])
            except LayerError as error:
                error.path = KeyPath(name) + error.path
                raise


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

    @property
    def is_wrapper(self) -> bool:
        return True

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

    @assembled
    def init_params(self, key: jax.Array) -> dict:
        return self.wrapped.init_params(key)

    @assembled
    def init_state(self, key: jax.Array) -> dict:
        return self.wrapped.init_state(key)


def check_layer_argument(owner: str, value: Any, what: str = "child") -> Layer:
    """Returns `value` if it is a layer, else raises an error naming it and the fix."""
    if isinstance(value, Layer):
        return value
    hint = " Wrap plain functions as `WrappedFunction(fn)`." if callable(value) else ""
    raise NotALayerError(f"{owner}: {what} must be a luxjax Layer, got {value!r} of type {type(value).__name__}.{hint}")
