"""`WeightNorm`: a layer's parameters learnt as a magnitude and a direction."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ..core import ConfigError, Layer, abstract_init, check_layer_argument, field


class WeightNorm(Layer):
    """Runs `layer` with the parameters `which_params` learnt as `w = g * v / norm(v)`, as Lux's `WeightNorm`.

    Each named parameter `w` is learnt as a magnitude `w_g` and a direction `w_v`; the norm
    is taken over every axis but the kept ones (`dims`), so `w_g` has size 1 in those axes
    and `w`'s size in the kept ones. At initialisation `w_v` is the layer's own initial `w`
    and `w_g` its norm, so the layer starts out computing exactly what `layer` does.
    `norm(v)` gets the dtype's machine epsilon added, as in Lux. A parameter whose initial
    value is all zeros (a zero-initialised bias) gives NaN gradients: Lux raises for it;
    leave it out of `which_params`.

    Args:
        layer: the layer to run; its parameters must be arrays at the top level of its `ps`.
        which_params: the names of the parameters to normalise, e.g. `("weight",)`.
        dims: `None` (the default), or one entry per name in `which_params`: the axis (an
            int, 0-based; negative counts from the end) or axes (a tuple) kept out of the
            norm. The default keeps the last axis, as Lux's default (its last dimension),
            which with Lux's layouts is `Dense`'s input axis and `Conv`'s output channels.
            PyTorch's `weight_norm(dense, dim=0)` is `dims=(0,)` here.

    Inputs: what `layer` takes. Returns what `layer` returns.

    `ps`: `{"normalized": {"weight_g": ..., "weight_v": ...}, "unnormalized": {...the other
    parameters of layer...}}` (Lux's names). `st`: `layer`'s own state.

    `WeightNorm` is a leaf for `layer_map` and debug mode: the layer inside is not visited.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.WeightNorm(lx.Dense(3, 2), ("weight",), dims=(0,))
        >>> model
        WeightNorm(Dense(3 => 2), ('weight',), dims=(0,))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> jax.tree.map(jnp.shape, ps)
        {'normalized': {'weight_g': (2, 1), 'weight_v': (2, 3)}, 'unnormalized': {'bias': (2,)}}
        >>> x = jnp.ones((4, 3))
        >>> plain = {"weight": ps["normalized"]["weight_v"], **ps["unnormalized"]}
        >>> bool(jnp.allclose(model(x, ps, st)[0], lx.Dense(3, 2)(x, plain, {})[0]))
        True
    """

    layer: Layer
    which_params: tuple[str, ...] = field(converter=lambda names: (names,) if isinstance(names, str) else tuple(names))
    _: dataclasses.KW_ONLY
    dims: tuple[Any, ...] | None = field(default=None, converter=lambda d: d if d is None else tuple(d))

    def __post_init__(self) -> None:
        check_layer_argument("WeightNorm", self.layer, "`layer`")
        shapes = abstract_init(self.layer, "params")
        arrays = {k: v for k, v in shapes.items() if isinstance(v, jax.ShapeDtypeStruct)}
        if not self.which_params:
            raise ConfigError("WeightNorm: `which_params` must name at least one parameter, got none.")
        for name in self.which_params:
            if name not in arrays:
                raise ConfigError(
                    f"WeightNorm: {self.layer!r} has no parameter array {name!r}; it has "
                    f"{', '.join(map(repr, arrays)) or 'none'}."
                )
        if self.dims is not None and len(self.dims) != len(self.which_params):
            raise ConfigError(
                f"WeightNorm: `dims` must have one entry per name in `which_params` ({len(self.which_params)}), "
                f"got {self.dims!r}."
            )
        for name in self.which_params:
            self._norm_axes(name, len(arrays[name].shape))

    def _norm_axes(self, name: str, ndim: int) -> tuple[int, ...]:
        """The axes `name`'s norm is taken over: all but the kept ones."""
        kept: Any = -1 if self.dims is None else self.dims[self.which_params.index(name)]
        kept = (kept,) if isinstance(kept, int) else kept
        if not (isinstance(kept, tuple) and all(isinstance(a, int) and -ndim <= a < ndim for a in kept)):
            raise ConfigError(
                f"WeightNorm: `dims` entry for {name!r} must be an axis or a tuple of axes of its {ndim} axes, "
                f"got {kept!r}."
            )
        kept = {a % ndim for a in kept}
        return tuple(a for a in range(ndim) if a not in kept)

    def _norm(self, name: str, v: jax.Array) -> jax.Array:
        return jnp.sqrt(jnp.sum(jnp.square(v), axis=self._norm_axes(name, v.ndim), keepdims=True))

    def init_params(self, key: jax.Array) -> dict:
        ps = self.layer.init_params(key)
        normalized = {}
        for name in self.which_params:
            normalized[f"{name}_g"] = self._norm(name, ps[name])
            normalized[f"{name}_v"] = ps[name]
        return {"normalized": normalized, "unnormalized": {k: v for k, v in ps.items() if k not in self.which_params}}

    def init_state(self, key: jax.Array) -> dict:
        return self.layer.init_state(key)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        weights = {}
        for name in self.which_params:
            v, g = ps["normalized"][f"{name}_v"], ps["normalized"][f"{name}_g"]
            weights[name] = v * (g / (self._norm(name, v) + jnp.finfo(v.dtype).eps))
        merged = {**ps["unnormalized"], **weights}
        order = abstract_init(self.layer, "params")
        return self.layer(x, {k: merged[k] for k in order}, st)

    def __repr__(self) -> str:
        dims = "" if self.dims is None else f", dims={self.dims!r}"
        return f"WeightNorm({self.layer!r}, {self.which_params!r}{dims})"
