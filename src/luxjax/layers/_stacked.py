"""Deep models: `Stacked` (n blocks scanned by `lax.scan`), `RepeatedLayer` and `Remat`."""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.core import Tracer

from ..core import (
    ConfigError,
    KeyPath,
    Layer,
    ShapeError,
    StructureError,
    WrapperLayer,
    check_layer_argument,
    iter_layers,
    recover,
    running_block,
    stack_blocks,
)
from ._containers import Chain
from ._util import check_positive


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), tree)


def _raising(run: Callable[[], Any]) -> Any:
    """`run()`, waited for; a check that failed inside compiled code raises its own error, not JAX's."""
    try:
        return jax.block_until_ready(run())
    except jax.errors.JaxRuntimeError as error:
        raised = recover(error)
        if raised is None:
            raise
        raise raised.with_traceback(None) from error


def _raising_backward(scan: Callable) -> Callable:
    """`scan` whose passes, run eagerly (an eager `jax.grad`), raise what a check inside raised.

    That is debug mode's `NaNError`, not JAX's runtime error; under `jax.jit` both passes are
    traced and unchanged. Used where the block holds a layer with `checks_at_run_time` (a `DebugLayer`): an eager
    `jax.grad` runs the scan's backward pass compiled, outside any code of the layers.
    """

    def concrete(tree: Any) -> bool:
        return not any(isinstance(leaf, Tracer) for leaf in jax.tree.leaves(tree))

    @jax.custom_vjp
    def run(x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        return scan(x, ps, st)

    def run_fwd(x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        if concrete((x, ps, st)):
            return _raising(lambda: jax.vjp(scan, x, ps, st))
        return jax.vjp(scan, x, ps, st)

    def run_bwd(vjp: Any, cotangent: Any) -> Any:
        return _raising(lambda: vjp(cotangent)) if concrete(cotangent) else vjp(cotangent)

    run.defvjp(run_fwd, run_bwd)
    return run


def _check_carry(layer: Layer, x: Any, y: Any) -> None:
    """A scanned layer's output is its next input: it must keep the input's structure, shapes and dtypes."""
    if jax.tree.structure(x) != jax.tree.structure(y) or _shapes(x) != _shapes(y):
        raise ShapeError(
            layer,
            f"each step's output is the next step's input, so it must have the input's shapes and dtypes; "
            f"got {_shapes(y)} from {_shapes(x)}.",
        )


class Stacked(WrapperLayer):
    """`n` copies of `block`, each with its own parameters, run one after the other by `jax.lax.scan`.

    The same as a `Chain` of `n` blocks with independent parameters, but JAX traces and
    compiles the block once, whatever `n` is: the first call of a deep model takes the time
    of one block, not of `n`.

    Args:
        block: the layer to stack; its output must have its input's shape and dtype (the scan
            carries it to the next block).
        n: the number of blocks.
        unroll: blocks per scan iteration (`jax.lax.scan`'s `unroll`): more compiles longer
            and may run faster.

    `ps` and `st`: the block's trees with a leading axis of length `n` on every array
    (`ps["weight"].shape == (n, *block_weight_shape)`); block `i` uses index `i` of each.
    Blocks are initialised with independent keys (`jax.vmap` over the block's init), so
    `Stacked(block, n)` starts from the values `Stacked.to_chain` gives an unrolled `Chain`.
    States are scanned too: each block keeps its own running statistics and random keys.

    Paths: the stack adds no level of its own (as a wrapper); a path inside the block, such as
    `blocks.attn`, names that layer in every block (`freeze` freezes it in all of them), and
    where values differ per block the index is part of the path: `layer_map` visits
    `blocks.0.attn`, ..., and debug mode reports `blocks.7.attn`.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Stacked(lx.Dense(4, 4, jnp.tanh), 3)
        >>> model
        Stacked(3 × Dense(4 => 4, tanh))
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> ps["weight"].shape, lx.parameter_count(model)
        ((3, 4, 4), 60)
        >>> model(jnp.ones((2, 4)), ps, st)[0].shape
        (2, 4)
    """

    block: Layer
    n: int
    _: dataclasses.KW_ONLY
    unroll: int = 1

    def __post_init__(self) -> None:
        check_layer_argument("Stacked", self.block, "`block`")
        check_positive(self, "n", "unroll")

    def copies(self) -> int:
        return self.n

    def init_params(self, key: jax.Array) -> dict:
        return jax.vmap(self.block.init_params)(jax.random.split(key, self.n))

    def init_state(self, key: jax.Array) -> dict:
        return jax.vmap(self.block.init_state)(jax.random.split(key, self.n))

    def _check_stacked(self, tree: Any, what: str) -> None:
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != self.n:
                raise StructureError(
                    self,
                    f"{what} must hold one block per index of their leading axis ({self.n}), but "
                    f"{KeyPath.from_jax(path).label()} has shape {jnp.shape(leaf)}.",
                )

    def __call__(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        def step(carry: Any, block: tuple[jax.Array, Any, Any]) -> tuple[Any, Any]:
            index, ps_i, st_i = block
            with running_block(index):
                y, st_i = self.block(carry, ps_i, st_i)
            _check_carry(self, carry, y)
            return y, st_i

        def scan(x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
            return jax.lax.scan(step, x, (jnp.arange(self.n), ps, st), unroll=self.unroll)

        if not any(isinstance(leaf, Tracer) for leaf in jax.tree.leaves((x, ps, st))):
            # Called eagerly, the scan still runs compiled, so a check inside it (debug mode) fails in
            # compiled code: wait for the result and raise what the check raised, as eager code does.
            return _raising(lambda: scan(x, ps, st))
        if any(getattr(layer, "checks_at_run_time", False) for _, layer in iter_layers(self.block)):
            return _raising_backward(scan)(x, ps, st)
        return scan(x, ps, st)

    @classmethod
    def from_chain(cls, chain: Chain, ps: Any, st: Any, *, unroll: int = 1) -> tuple["Stacked", Any, Any]:
        """A `Chain` of equal blocks as a `Stacked`, with its values stacked: `(model, ps, st)`.

        Example:
            >>> import jax, luxjax as lx
            >>> chain = lx.Chain(lx.Dense(2, 2), lx.Dense(2, 2))
            >>> ps, st = lx.setup(jax.random.key(0), chain)
            >>> stacked, ps_s, st_s = lx.Stacked.from_chain(chain, ps, st)
            >>> stacked, ps_s["weight"].shape
            (Stacked(2 × Dense(2 => 2)), (2, 2, 2))
        """
        blocks = list(chain.children().items())
        if not blocks:
            raise ConfigError("Stacked.from_chain: the chain has no blocks to stack.")
        first_name, first = blocks[0]
        for name, block in blocks[1:]:
            if block != first:
                raise ConfigError(
                    f"Stacked.from_chain: every block must be the same layer, but {name!r} is {block!r} "
                    f"and {first_name!r} is {first!r}."
                )

        def stack(tree: Any) -> Any:
            return stack_blocks([tree[name] for name, _ in blocks])

        return cls(first, len(blocks), unroll=unroll), stack(ps), stack(st)

    def to_chain(self, ps: Any, st: Any) -> tuple[Chain, Any, Any]:
        """The unrolled `Chain` of the `n` blocks (`layer_1`, ...) with block `i`'s values: `(model, ps, st)`.

        Example:
            >>> import jax, luxjax as lx
            >>> model = lx.Stacked(lx.Dense(2, 2), 2)
            >>> ps, st = lx.setup(jax.random.key(0), model)
            >>> chain, ps_c, st_c = model.to_chain(ps, st)
            >>> chain, ps_c["layer_2"]["weight"].shape
            (Chain(Dense(2 => 2), Dense(2 => 2)), (2, 2))
        """
        self._check_stacked(ps, "parameters")
        self._check_stacked(st, "states")
        names = [f"layer_{i + 1}" for i in range(self.n)]
        slices = {name: (KeyPath(i).get(ps), KeyPath(i).get(st)) for i, name in enumerate(names)}
        chain = Chain(*(self.block,) * self.n)
        return chain, {n: s[0] for n, s in slices.items()}, {n: s[1] for n, s in slices.items()}

    def display_args(self) -> list[str]:
        return [f"unroll = {self.unroll}"] if self.unroll != 1 else []

    def __repr__(self) -> str:
        unroll = f", unroll={self.unroll}" if self.unroll != 1 else ""
        return f"Stacked({self.n} × {self.block!r}{unroll})"


class RepeatedLayer(WrapperLayer):
    """One layer, one set of parameters, applied `repeats` times (Lux's `RepeatedLayer`), by `jax.lax.scan`.

    `y = x`, then `repeats` times `y, st = layer(y, ps, st)`; with `input_injection=True`
    the layer gets `(y, x)` instead of `y`. The state threads through the repeats.

    Args:
        layer: the layer to repeat; its output must have its input's shape and dtype.
        repeats: how many times to apply it.
        input_injection: pass the original input along with each step's input.

    `ps` and `st`: the layer's own.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.RepeatedLayer(lx.WrappedFunction(lambda x: 2 * x), repeats=3)
        >>> model(jnp.ones(2), {}, {})[0]
        Array([8., 8.], dtype=float32)
    """

    layer: Layer
    _: dataclasses.KW_ONLY
    repeats: int = 10
    input_injection: bool = False

    def __post_init__(self) -> None:
        check_layer_argument("RepeatedLayer", self.layer, "`layer`")
        check_positive(self, "repeats")

    def __call__(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        def step(carry: tuple[Any, Any], _: None) -> tuple[tuple[Any, Any], None]:
            y, st = carry
            new_y, st = self.layer((y, x) if self.input_injection else y, ps, st)
            _check_carry(self, y, new_y)
            return (new_y, st), None

        (y, st), _ = jax.lax.scan(step, (x, st), None, length=self.repeats)
        return y, st

    def __repr__(self) -> str:
        injection = ", input_injection=True" if self.input_injection else ""
        return f"RepeatedLayer({self.layer!r}, repeats={self.repeats}{injection})"


_POLICIES = sorted(name for name in dir(jax.checkpoint_policies) if not name.startswith("_"))


class Remat(WrapperLayer):
    """Runs `layer` under `jax.checkpoint`: its activations are recomputed in the backward pass.

    Trades compute for memory: the backward pass of `layer` recomputes what it needs instead
    of keeping it from the forward pass. Outputs and gradients are unchanged.

    Args:
        layer: the layer to rematerialise.
        policy: which intermediate values may still be saved, by the name of one of
            `jax.checkpoint_policies` (e.g. `"dots_saveable"`: keep matrix products,
            recompute the rest) or as such a policy function; `None` (default) saves nothing.

    `ps` and `st`: the layer's own; paths, display and the toolkit go through it as through
    any wrapper. `Stacked(Remat(block), n)` rematerialises each block.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.Remat(lx.Dense(2, 2, jnp.tanh), policy="dots_saveable")
        >>> model
        Remat(Dense(2 => 2, tanh), policy='dots_saveable')
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> jax.grad(lambda ps: model(jnp.ones((1, 2)), ps, st)[0].sum())(ps)["weight"].shape
        (2, 2)
    """

    layer: Layer
    policy: str | Callable | None = None

    def __post_init__(self) -> None:
        check_layer_argument("Remat", self.layer, "`layer`")
        if isinstance(self.policy, str) and self.policy not in _POLICIES:
            raise ConfigError(
                f"Remat: unknown `policy` {self.policy!r}; use None, a function, or one of "
                f"jax.checkpoint_policies: {', '.join(_POLICIES)}."
            )
        if not (self.policy is None or isinstance(self.policy, str) or callable(self.policy)):
            raise ConfigError(f"Remat: `policy` must be None, a name or a function, got {self.policy!r}.")

    def __call__(self, x: Any, ps: Any, st: Any) -> tuple[Any, Any]:
        policy = getattr(jax.checkpoint_policies, self.policy) if isinstance(self.policy, str) else self.policy
        return jax.checkpoint(self.layer.__call__, policy=policy)(x, ps, st)

    def __repr__(self) -> str:
        policy = f", policy={self.policy!r}" if self.policy is not None else ""
        return f"Remat({self.layer!r}{policy})"
