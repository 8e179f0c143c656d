"""`check_layer`: the contract battery every luxjax layer passes."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from ..core import KeyPath, Layer, display, parameter_count, setup, state_count


def _fail(model: Layer, what: str) -> AssertionError:
    return AssertionError(f"check_layer({model!r}): {what}")


def _float_leaves(tree: Any) -> bool:
    return any(jnp.issubdtype(jnp.result_type(leaf), jnp.floating) for leaf in jax.tree.leaves(tree))


def _assert_close(model: Layer, what: str, actual: Any, expected: Any, rtol: float, atol: float) -> None:
    if jax.tree.structure(actual) != jax.tree.structure(expected):
        raise _fail(model, f"{what}: structure {jax.tree.structure(actual)} != {jax.tree.structure(expected)}")
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        if jnp.issubdtype(jnp.result_type(e), jax.dtypes.prng_key):
            a, e = jax.random.key_data(a), jax.random.key_data(e)
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=rtol, atol=atol, err_msg=f"{model!r}: {what}")


def _key_order(tree: Any) -> Any:
    if isinstance(tree, dict):
        return [(k, _key_order(v)) for k, v in tree.items()]
    if isinstance(tree, (list, tuple)):
        return [_key_order(v) for v in tree]
    return None


def _same_values(model: Layer, what: str, actual: Any, expected: Any) -> None:
    if _key_order(actual) != _key_order(expected) or jax.tree.structure(actual) != jax.tree.structure(expected):
        raise _fail(
            model,
            f"{what}: the tree {_key_order(actual)} differs from init's {_key_order(expected)}; "
            "an `assembled` init must give each child a key as ContainerLayer does.",
        )
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        if jnp.issubdtype(jnp.result_type(e), jax.dtypes.prng_key):
            a, e = jax.random.key_data(a), jax.random.key_data(e)
        if jnp.result_type(a) != jnp.result_type(e) or not np.array_equal(np.asarray(a), np.asarray(e)):
            raise _fail(
                model,
                f"{what} differ from what init gives with the same key; an `assembled` init must give "
                "each child a key as ContainerLayer does (a wrapper passes its key on, a container "
                "splits it, one key per child in child order).",
            )


def _same_structure(model: Layer, what: str, new: Any, old: Any) -> None:
    if jax.tree.structure(new) != jax.tree.structure(old):
        raise _fail(model, f"{what} changed structure: {jax.tree.structure(old)} -> {jax.tree.structure(new)}")
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
        if (jnp.shape(a), jnp.result_type(a)) != (jnp.shape(b), jnp.result_type(b)):
            raise _fail(
                model,
                f"{what} changed a leaf from {jnp.shape(b)} {jnp.result_type(b)} "
                f"to {jnp.shape(a)} {jnp.result_type(a)}",
            )


def check_layer(
    model: Layer,
    x: Any,
    *,
    key: jax.Array | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    check_gradients: bool = True,
    check_vmap: bool = True,
) -> None:
    """Runs luxjax's layer contract on `model` with input `x`; raises `AssertionError` on failure.

    Checks, in order:

    1. the layer is hashable and equal to itself, and prints (`repr`, the counted tree);
    2. `parameter_count`/`state_count` agree with the arrays `setup` makes, and `setup`
       gives bit for bit (and in the same key order) what `init_params`/`init_state` give
       when called directly with the two halves of `jax.random.split(key)`;
    3. `jax.jit` gives the same output and state as eager execution;
    4. the new state keeps the structure, shapes and dtypes of the old one, also when it
       goes through `jax.lax.cond` (so it can be carried through loops and conditionals);
    5. gradients with respect to the floating-point parameters and input match finite
       differences (`jax.test_util.check_grads`, reverse mode);
    6. `jax.vmap` over an extra leading axis gives each sample's eager result;
    7. `luxjax.experimental.layer_map` visits only paths that exist in `ps` and `st`, hands
       `f` exactly the entries at those paths, and the identity map changes nothing;
    8. `luxjax.experimental.freeze(model, ps, st)` gives a model without parameters and with
       the same output, and `unfreeze` gives back what `unfreeze(model, ps, st)` gives (the
       model itself unless it holds a `FrozenLayer`), with the very same `ps` arrays and a
       state of the same structure;
    9. `luxjax.experimental.debug_mode(model)` prints, takes the same `ps` and `st`, and gives
       the same output, new state and parameter gradients (to 1e-6: layers that compile their
       own loops, `Recurrence` and `Stacked`, round differently with the checks in them).

    Example:
        >>> import jax.numpy as jnp, luxjax as lx
        >>> from luxjax.testing import check_layer
        >>> check_layer(lx.Dense(3, 2, jnp.tanh), jnp.ones((4, 3)))
    """
    key = jax.random.key(0) if key is None else key
    hash(model)
    if model != model:
        raise _fail(model, "a layer must equal itself")
    if not repr(model) or not display(model):
        raise _fail(model, "printing gave an empty string")

    ps, st = setup(key, model)
    n_ps = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(ps))
    if parameter_count(model) != n_ps:
        raise _fail(model, f"parameter_count says {parameter_count(model)} but setup made {n_ps} parameters")
    if state_count(model) < sum(int(np.size(leaf)) for leaf in jax.tree.leaves(st)):
        raise _fail(model, f"state_count says {state_count(model)}, fewer than the state arrays setup made")
    key_ps, key_st = jax.random.split(key)
    _same_values(model, "setup's parameters", ps, model.init_params(key_ps))
    _same_values(model, "setup's states", st, model.init_state(key_st))

    y, new_st = model(x, ps, st)
    y_jit, st_jit = jax.jit(lambda x, ps, st: model(x, ps, st))(x, ps, st)
    _assert_close(model, "jit output", y_jit, y, rtol, atol)
    _assert_close(model, "jit state", st_jit, new_st, rtol, atol)

    _same_structure(model, "the state", new_st, st)
    through_cond = jax.jit(lambda p, x, ps, st: jax.lax.cond(p, lambda: model(x, ps, st)[1], lambda: st))
    _same_structure(model, "the state through lax.cond", through_cond(True, x, ps, st), st)

    direction = jax.tree.map(lambda a: jax.random.normal(jax.random.key(1), jnp.shape(a)), y)

    def objective(layer: Layer, ps: Any, x: Any) -> jax.Array:
        out = layer(x, ps, st)[0]
        return sum((jnp.vdot(a, d) for a, d in zip(jax.tree.leaves(out), jax.tree.leaves(direction))), jnp.zeros(()))

    if check_gradients:
        if _float_leaves(ps):
            check_grads(lambda ps: objective(model, ps, x), (ps,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)
        if _float_leaves(x):
            check_grads(lambda x: objective(model, ps, x), (x,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2)

    if check_vmap:
        x2 = jax.tree.map(lambda a: a * 0.5 if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a[::-1], x)
        batched = jax.tree.map(lambda a, b: jnp.stack([a, b]), x, x2)
        y_vmap = jax.vmap(lambda xb: model(xb, ps, st)[0])(batched)
        expected = jax.tree.map(lambda a, b: jnp.stack([a, b]), y, model(x2, ps, st)[0])
        _assert_close(model, "vmap output", y_vmap, expected, 1e-4, 1e-4)

    _check_layer_map(model, ps, st)
    _check_freeze(model, x, ps, st, y, rtol, atol)
    _check_debug_mode(model, x, ps, st, y, new_st, objective if check_gradients else None)


def _equal(a: Any, b: Any) -> bool:
    if jax.tree.structure(a) != jax.tree.structure(b):
        return False
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b))
    unwrap = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x  # noqa: E731
    return all(np.array_equal(unwrap(x), unwrap(y)) for x, y in leaves)


def _check_layer_map(model: Layer, ps: Any, st: Any) -> None:
    from ..experimental import layer_map

    def visit(layer: Layer, leaf_ps: Any, leaf_st: Any, path: KeyPath) -> tuple[Layer, Any, Any]:
        for tree, leaf_tree, what in ((ps, leaf_ps, "ps"), (st, leaf_st, "st")):
            try:
                found = path.get(tree)
            except KeyError as error:
                raise _fail(model, f"layer_map visited {path!r}, which is not a place in {what}: {error}") from None
            # a block index (a stack's block) is a slice: equal values, not the same object
            sliced = any(isinstance(key, int) for key in path)
            if not (_equal(found, leaf_tree) if sliced else found is leaf_tree):
                raise _fail(model, f"layer_map gave {layer!r} at {path!r} a different {what} than the one there")
        return layer, leaf_ps, leaf_st

    new_model, new_ps, new_st = layer_map(visit, model, ps, st)
    if new_model != model:
        raise _fail(model, f"layer_map with the identity function changed the model into {new_model!r}")
    for new, old, what in ((new_ps, ps, "ps"), (new_st, st, "st")):
        if jax.tree.structure(new) != jax.tree.structure(old) or any(
            a is not b for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old))
        ):
            raise _fail(model, f"layer_map with the identity function changed {what}")


def _check_freeze(model: Layer, x: Any, ps: Any, st: Any, y: Any, rtol: float, atol: float) -> None:
    from ..experimental import freeze, unfreeze

    frozen, frozen_ps, frozen_st = freeze(model, ps, st)
    if parameter_count(frozen) != 0:
        raise _fail(model, f"freeze left {parameter_count(frozen)} parameters in {frozen!r}")
    _assert_close(model, "frozen output", frozen(x, frozen_ps, frozen_st)[0], y, rtol, atol)
    # unfreeze removes every FrozenLayer, also those the model held: compare with unfreezing the model itself.
    expected, expected_ps, expected_st = unfreeze(model, ps, st)
    thawed, thawed_ps, thawed_st = unfreeze(frozen, frozen_ps, frozen_st)
    if thawed != expected:
        raise _fail(model, f"unfreeze(freeze(model)) gave back {thawed!r}, not {expected!r}")
    if jax.tree.structure(thawed_ps) != jax.tree.structure(expected_ps) or any(
        a is not b for a, b in zip(jax.tree.leaves(thawed_ps), jax.tree.leaves(expected_ps))
    ):
        raise _fail(model, "unfreeze(freeze(model, ps, st)) did not give back the very same arrays of ps")
    _same_structure(model, "the state after unfreeze(freeze(model, ps, st))", thawed_st, expected_st)


def _check_debug_mode(
    model: Layer, x: Any, ps: Any, st: Any, y: Any, new_st: Any, objective: Callable[..., jax.Array] | None
) -> None:
    """The debug model computes what the model computes.

    Eagerly it runs the very same operations, but where a layer runs its children in compiled
    code (`Recurrence`'s and `Stacked`'s `lax.scan`) the checks change how XLA fuses the
    computation, not what it computes: results agree to float rounding (1e-6).
    """
    from ..experimental import debug_mode

    debug = debug_mode(model)
    if not repr(debug) or not display(debug):
        raise _fail(model, "printing debug_mode(model) gave an empty string")
    y_debug, st_debug = debug(x, ps, st)
    _assert_close(model, "debug_mode output", y_debug, y, 1e-6, 1e-6)
    _assert_close(model, "debug_mode new state", st_debug, new_st, 1e-6, 1e-6)
    if objective is not None and _float_leaves(ps):
        expected = jax.grad(lambda ps: objective(model, ps, x))(ps)
        actual = jax.grad(lambda ps: objective(debug, ps, x))(ps)
        _assert_close(model, "debug_mode gradient", actual, expected, 1e-6, 1e-6)
