"""Mixed precision: the `MixedPrecision` wrapper and `mixed_precision`, which applies it to a model or its parts."""

from __future__ import annotations

from typing import Any

import jax

from ..core import (
    KeyPath,
    Layer,
    Precision,
    Where,
    WrapperLayer,
    cast_floating,
    check_layer_argument,
    computing_in,
    selector,
)


class MixedPrecision(WrapperLayer):
    """Runs `layer` under the precision `policy`: parameters and inputs cast to `policy.compute` at call.

    Args:
        layer: the layer to run.
        policy: a `luxjax.Precision`; default `Precision()`: parameters float32, compute
            bfloat16, output float32.

    `setup` stores the parameters in `policy.params`. At each call the floating leaves of
    `ps` and of the input are cast to `policy.compute` and the layer runs in that dtype; its
    floating outputs are cast to `policy.output`. The cast is part of the call, so gradients
    arrive in `policy.params` and the optimizer updates float32 master parameters. States are
    never cast: normalisation layers keep their statistics (and compute them) in float32, as
    attention computes its softmax; frozen values (`FrozenLayer`, `LoRA`) are cast with `ps`.

    `ps` and `st`: the layer's own; paths, display and the toolkit go through it as through
    any wrapper.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.MixedPrecision(lx.Dense(2, 3))
        >>> model
        MixedPrecision(Dense(2 => 3), Precision(params=float32, compute=bfloat16, output=float32))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ps["weight"].dtype, model(jnp.ones((4, 2)), ps, st)[0].dtype
        (dtype('float32'), dtype('float32'))
    """

    layer: Layer
    policy: Precision = Precision()

    def __post_init__(self) -> None:
        check_layer_argument("MixedPrecision", self.layer, "`layer`")
        if not isinstance(self.policy, Precision):
            raise TypeError(f"MixedPrecision: `policy` must be a luxjax.Precision, got {self.policy!r}.")

    def init_params(self, key: jax.Array) -> dict:
        return cast_floating(self.layer.init_params(key), self.policy.params)

    def __call__(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        compute = self.policy.compute
        with computing_in(compute):
            y, st = self.layer(cast_floating(x, compute), cast_floating(ps, compute), st)
        return cast_floating(y, self.policy.output), st

    def display_args(self) -> list[str]:
        return [f"policy = {self.policy!r}"]

    def __repr__(self) -> str:
        return f"MixedPrecision({self.layer!r}, {self.policy!r})"


def mixed_precision(model: Layer, policy: Precision | None = None, *, where: Where | None = None) -> Layer:
    """`model` with the precision `policy` applied to all of it, or to the parts `where` selects.

    Without `where`, returns `MixedPrecision(model, policy)`. With `where`, the layers are
    visited from the top (a container before its children), and each selected one is
    wrapped whole in `MixedPrecision`, its children included; a layer already under a policy
    gets the new one. `where` takes the selectors `freeze` takes: a dotted path pattern
    (`"blocks.*.attn"`; `*` matches within one part, a stack's block indices are left out), a
    layer type, a list of those, or a predicate `lambda path, layer: ...`. `ps` and `st`
    keep their structure (a wrapper adds no level), so existing trees fit the new model.

    A `where` that selects nothing is a `ValueError` listing the layers there are.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Chain(lx.Dense(2, 8), lx.LayerNorm(8), lx.Dense(8, 1))
        >>> lx.mixed_precision(model, where=lx.Dense)
        Chain(MixedPrecision(Dense(2 => 8), Precision(params=float32, compute=bfloat16, output=float32)), \
LayerNorm(8), MixedPrecision(Dense(8 => 1), Precision(params=float32, compute=bfloat16, output=float32)))
    """
    check_layer_argument("mixed_precision", model, "`model`")
    policy = Precision() if policy is None else policy
    if not isinstance(policy, Precision):
        raise TypeError(f"mixed_precision: `policy` must be a luxjax.Precision, got {policy!r}.")
    if where is None:
        return MixedPrecision(model.layer if isinstance(model, MixedPrecision) else model, policy)
    select = selector("mixed_precision", where)
    seen: list[str] = []

    def visit(layer: Layer, path: KeyPath) -> Layer:
        policy_here = layer.policy if isinstance(layer, MixedPrecision) else None
        inner = layer.layer if isinstance(layer, MixedPrecision) else layer
        if select(path, inner):
            return MixedPrecision(inner, policy)
        seen.append(f"{inner!r} at {path.label()}")
        children = inner.children()
        new = {name: visit(child, path if inner.is_wrapper else path / name) for name, child in children.items()}
        if all(new[name] is child for name, child in children.items()):
            return layer
        inner = inner.replace_children(new)
        return inner if policy_here is None else MixedPrecision(inner, policy_here)

    result = visit(model, KeyPath())
    if result is model:
        raise ValueError(f"mixed_precision: `where` selected no layer; the layers are: {'; '.join(seen)}.")
    return result
