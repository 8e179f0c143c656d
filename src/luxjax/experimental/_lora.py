"""Low-rank adaptation: `LoRA`, `lora`, `merge_lora` and `unlora`, built from `layer_map` and freezing."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from ..core import (
    ConfigError,
    KeyPath,
    Layer,
    StructureError,
    Where,
    abstract_init,
    cast_floating,
    check_layer_argument,
    compute_dtype,
    parameter_count,
    selector,
    tied_groups,
)
from ._freeze import _check_frozen_state, freeze, unfreeze
from ._layer_map import layer_map


def _matrix_shape(weight_shape: tuple[int, ...], layer: Layer) -> tuple[int, int]:
    """The weight as a matrix `(m, n)`: Dense's `(out, in)`; a convolution's `(window * in, out)`."""
    if len(weight_shape) == 2:
        return weight_shape[0], weight_shape[1]
    if len(weight_shape) > 2:
        return math.prod(weight_shape[:-1]), weight_shape[-1]
    raise ConfigError(f"LoRA: {layer!r} has a `weight` of shape {weight_shape}; LoRA adapts a matrix or a kernel.")


class LoRA(Layer):
    """`layer` with its parameters frozen and a trainable low-rank update of its `weight`.

    The layer runs with `weight + (alpha / rank) * (A @ B)` (reshaped to the weight's shape),
    where the weight seen as a matrix is `(m, n)` (`Dense`: `(out, in)`; a convolution's HWIO
    kernel: `(kernel window * in, out)`), `A` is `(m, rank)` and `B` is `(rank, n)`. `A` starts
    random and `B` at zero, so the adapted layer starts equal to `layer`. The base parameters
    live in the state, as `FrozenLayer` keeps them: no optimizer sees them.

    Args:
        layer: the layer to adapt; it must have a `weight` parameter (Dense, Conv, the
            projections of `MultiHeadAttention`, ...).
        rank: the rank of the update, at most `min(m, n)`.
        alpha: the update's scale numerator (default: `rank`, a scale of 1).

    `ps`: `{"A": (m, rank), "B": (rank, n)}`. `st`: `{"frozen_params": layer's ps, "states":
    layer's st}`. Computing the update makes one weight-sized array per call.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> from luxjax.experimental import LoRA
        >>> layer = LoRA(lx.Dense(8, 4), rank=2)
        >>> print(layer)
        LoRA(Dense(8 => 4), rank=2)  # 24 parameters, plus 36 non-trainable
        >>> ps, st = lx.setup(jax.random.key(0), layer)
        >>> ps["A"].shape, ps["B"].shape
        ((4, 2), (2, 8))
    """

    layer: Layer
    rank: int
    alpha: float | None = None

    def __post_init__(self) -> None:
        check_layer_argument("LoRA", self.layer, "`layer`")
        template = abstract_init(self.layer, "params")
        if not isinstance(template, dict) or "weight" not in template:
            have = ", ".join(map(repr, template)) if isinstance(template, dict) and template else "no parameters"
            raise ConfigError(f"LoRA: {self.layer!r} has no `weight` to adapt; it has {have}.")
        m, n = _matrix_shape(tuple(template["weight"].shape), self.layer)
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or not 1 <= self.rank <= min(m, n):
            raise ConfigError(
                f"LoRA: `rank` must be an int from 1 to {min(m, n)} for {self.layer!r} (its weight is a {m} x {n} "
                f"matrix), got {self.rank!r}."
            )
        if self.alpha is not None and not isinstance(self.alpha, (int, float)):
            raise ConfigError(f"LoRA: `alpha` must be a number or None, got {self.alpha!r}.")

    def frozen_parameters(self) -> int:
        return parameter_count(self.layer)

    @property
    def scale(self) -> float:
        """`alpha / rank`, the factor of the update."""
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def _shape(self) -> tuple[int, ...]:
        return tuple(abstract_init(self.layer, "params")["weight"].shape)

    def init_params(self, key: jax.Array) -> dict:
        m, n = _matrix_shape(self._shape(), self.layer)
        bound = 1 / math.sqrt(self.rank)
        a = jax.random.uniform(key, (m, self.rank), jnp.float32, -bound, bound)
        return {"A": a, "B": jnp.zeros((self.rank, n), jnp.float32)}

    def init_state(self, key: jax.Array) -> dict:
        key_ps, key_st = jax.random.split(key)
        return {"frozen_params": self.layer.init_params(key_ps), "states": self.layer.init_state(key_st)}

    def delta(self, ps: Any) -> jax.Array:
        """The update `(alpha / rank) * A @ B`, in the weight's shape."""
        return jnp.reshape(self.scale * (ps["A"] @ ps["B"]), self._shape())

    def __call__(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        _check_frozen_state(self, st)
        # Under a precision policy the frozen base is cast as the policy casts `ps`.
        base = cast_floating(jax.lax.stop_gradient(st["frozen_params"]), compute_dtype())
        weight = base["weight"] + self.delta(ps).astype(base["weight"].dtype)
        y, inner_st = self.layer(x, {**base, "weight": weight}, st["states"])
        return y, {"frozen_params": st["frozen_params"], "states": inner_st}

    def __repr__(self) -> str:
        alpha = f", alpha={self.alpha!r}" if self.alpha is not None else ""
        return f"LoRA({self.layer!r}, rank={self.rank}{alpha})"


def lora(
    model: Layer,
    ps: Any,
    st: Any,
    rank: int,
    *,
    where: Where,
    alpha: float | None = None,
    key: jax.Array | None = None,
    trainable: Where | None = None,
) -> tuple[Layer, Any, Any]:
    """Wraps the chosen layers of `model` in `LoRA` adapters and freezes the rest; returns `(model, ps, st)`.

    Every leaf layer that `where` selects becomes `LoRA(layer, rank, alpha)` with the layer's
    current values frozen (moved into the state) and a fresh `A` (random) and `B` (zero), so the
    adapted model starts with exactly the outputs of `model`. Every other layer with parameters
    is frozen (`freeze`), except those `trainable` selects (a new head, say): so `ps` holds the
    adapters (and those layers) only, and an optimizer keeps state for nothing else.

    Args:
        model, ps, st: the model and its trees.
        rank: the adapters' rank.
        where: which layers: a dotted path pattern (`"blocks.attn.mha.*_proj"`, `*` matches
            any part), a layer type (`lx.Dense`), a tuple of those, or a function
            `(path, layer) -> bool`. Inside a `Stacked`, patterns leave out the block index
            and select the layer in every block. Matching nothing is an error.
        alpha: the update's scale numerator (default `rank`).
        key: the PRNG key for the `A` matrices (default `jax.random.key(0)`).
        trainable: layers to leave trainable besides the adapters, selected as by `where`
            (default: none).

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> from luxjax.experimental import lora
        >>> model = lx.Chain(enc=lx.Dense(8, 8, jnp.tanh), head=lx.Dense(8, 2))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> adapted, ps_a, st_a = lora(model, ps, st, rank=2, where="enc", trainable="head")
        >>> adapted
        Chain(enc=LoRA(Dense(8 => 8, tanh), rank=2), head=Dense(8 => 2))
        >>> lx.parameter_count(adapted), lx.parameter_count(model)
        (50, 90)
        >>> bool(jnp.allclose(adapted(jnp.ones((1, 8)), ps_a, st_a)[0], model(jnp.ones((1, 8)), ps, st)[0]))
        True
    """
    select = selector("lora", where)
    key = jax.random.key(0) if key is None else key
    tied = {path: group for group in tied_groups(ps) for path in group}
    chosen: list[KeyPath] = []
    seen: list[str] = []

    def adapt(layer: Layer, layer_ps: Any, layer_st: Any, path: KeyPath) -> tuple[Layer, Any, Any]:
        seen.append(f"{path.label()} ({layer!r})")
        if isinstance(layer, LoRA) or not select(path, layer):
            return layer, layer_ps, layer_st
        if path / "weight" in tied:
            others = ", ".join(str(p) for p in tied[path / "weight"] if p != path / "weight")
            raise ValueError(
                f"lora: {path.label()}.weight is tied to {others}; an adapter on one place of a tie would untie "
                "them. Adapt neither, or untie them first."
            )
        adapter = LoRA(layer, rank, alpha)
        adapter_ps = adapter.init_params(jax.random.fold_in(key, len(chosen)))
        chosen.append(path)
        return adapter, adapter_ps, {"frozen_params": layer_ps, "states": layer_st}

    model, ps, st = layer_map(adapt, model, ps, st)
    if not chosen:
        raise ValueError(f"lora: `where` selected no layer; the leaf layers are: {'; '.join(seen)}.")
    keep = (lambda path, layer: False) if trainable is None else selector("lora", trainable)
    return freeze(model, ps, st, where=lambda path, layer: not isinstance(layer, LoRA) and not keep(path, layer))


def _undo(model: Layer, ps: Any, st: Any, merge: bool) -> tuple[Layer, Any, Any]:
    def undo(layer: Layer, layer_ps: Any, layer_st: Any, path: KeyPath) -> tuple[Layer, Any, Any]:
        if not isinstance(layer, LoRA):
            return layer, layer_ps, layer_st
        _check_frozen_state(layer, layer_st, path)
        base = layer_st["frozen_params"]
        if merge:
            if not (isinstance(layer_ps, dict) and {"A", "B"} <= set(layer_ps)):
                raise StructureError(layer, "parameters must be {'A': ..., 'B': ...} as `lora` makes them.", path=path)
            base = {**base, "weight": base["weight"] + layer.delta(layer_ps).astype(base["weight"].dtype)}
        return layer.layer, base, layer_st["states"]

    return unfreeze(*layer_map(undo, model, ps, st))


def merge_lora(model: Layer, ps: Any, st: Any) -> tuple[Layer, Any, Any]:
    """Folds every `LoRA` adapter into its layer's weight: `(plain model, ps, st)` with the same outputs.

    Each adapted layer gets back its parameters, trainable again, with
    `weight + (alpha / rank) * A @ B`, and the layers `lora` froze are unfrozen (as is any other
    `FrozenLayer`): no `LoRA` or `FrozenLayer` is left and the parameter count is the original
    model's.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> from luxjax.experimental import lora, merge_lora
        >>> model = lx.Dense(4, 4)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> adapted, ps_a, st_a = lora(model, ps, st, rank=1, where=lx.Dense)
        >>> merged, ps_m, st_m = merge_lora(adapted, ps_a, st_a)
        >>> merged == model, lx.parameter_count(merged)
        (True, 20)
    """
    return _undo(model, ps, st, merge=True)


def unlora(model: Layer, ps: Any, st: Any) -> tuple[Layer, Any, Any]:
    """Drops every `LoRA` adapter and unfreezes: `(plain model, ps, st)` with the base's own, unchanged values.

    Example:
        >>> import jax, luxjax as lx
        >>> from luxjax.experimental import lora, unlora
        >>> model = lx.Dense(4, 4)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> base, ps_b, _ = unlora(*lora(model, ps, st, rank=1, where=lx.Dense))
        >>> base == model and ps_b["weight"] is ps["weight"]
        True
    """
    return _undo(model, ps, st, merge=False)
