"""luxjax: the same models as layers plus `ps`/`st` trees, trained with a user-written `jax.jit`
step and with luxjax's own `luxjax.training.single_train_step`.

Pieces that have not landed in luxjax yet raise `NotMeasured` with the reason, so the table
says what is missing instead of leaving a silent gap.
"""

import importlib

import jax
import jax.numpy as jnp
import optax

import luxjax as lx

from ._harness import NotMeasured
from ._workloads import LEARNING_RATE


def need(module: str, name: str, why: str):
    """`module.name`, or `NotMeasured` naming what is missing."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise NotMeasured(f"`{module}.{name}` is not in luxjax yet ({why})") from None


def _dense_ps(p):
    return {"weight": jnp.asarray(p["weight"]), "bias": jnp.asarray(p["bias"])}


def mlp(params):
    """`Chain(Dense(a, b, relu), ..., Dense(y, z))` and its `ps`, `st` holding the canonical weights."""
    layers = [lx.Dense(*p["weight"].shape[::-1], jax.nn.relu) for p in params[:-1]]
    layers.append(lx.Dense(*params[-1]["weight"].shape[::-1]))
    model = lx.Chain(*layers)
    _, st = lx.setup(jax.random.key(0), model)
    ps = {f"layer_{i + 1}": _dense_ps(p) for i, p in enumerate(params)}
    return model, ps, st


def step_runner(model, ps, st, loss, batch):
    """The train step a user writes (as in examples/): `jax.value_and_grad` of the model call,
    optax adam, `jax.jit` over a closure of the model."""
    tx = optax.adam(LEARNING_RATE)

    @jax.jit
    def train_step(ps, st, opt_state, x, y):
        def loss_fn(ps):
            out, new_st = model(x, ps, st)
            return loss(out, y), new_st

        (value, st), grads = jax.value_and_grad(loss_fn, has_aux=True)(ps)
        updates, opt_state = tx.update(grads, opt_state, ps)
        return optax.apply_updates(ps, updates), st, opt_state, value

    state = [ps, st, tx.init(ps)]

    def step():
        state[0], state[1], state[2], value = train_step(state[0], state[1], state[2], *batch)
        return value

    return step


def train_state_runner(model, ps, st, loss, batch):
    """luxjax's own helper: `TrainState` + `single_train_step(objective, data, ts)`."""
    train_state = need("luxjax.training", "TrainState", "issue 7, branch `training`")
    single_train_step = need("luxjax.training", "single_train_step", "issue 7, branch `training`")

    def objective(model, ps, st, data):
        x, y = data
        out, st = model(x, ps, st)
        return loss(out, y), st, {}

    holder = [train_state(model, ps, st, optax.adam(LEARNING_RATE))]

    def step():
        _, value, _, holder[0] = single_train_step(objective, batch, holder[0])
        return value

    return step


def freeze_backbone(model, ps, st):
    """Freezes every Dense but the last with `luxjax.experimental.freeze`, through `layer_map`."""
    freeze = need("luxjax.experimental", "freeze", "issue 4, branch `surgery`")
    layer_map = need("luxjax.experimental", "layer_map", "issue 5")
    head = lx.KeyPath(list(model.children())[-1])

    def f(layer, p, s, path):
        return (layer, p, s) if path == head else freeze(layer, p, s)

    return layer_map(f, model, ps, st)


def debug(model):
    """`debug_mode(model, nan_check="both")`: NaN checks in the forward and the backward pass."""
    debug_mode = need("luxjax.experimental", "debug_mode", "issue 6, branch `debug`")
    return debug_mode(model, nan_check="both")


def cnn(params):
    """`Chain(Conv(3x3, relu), Conv(3x3, relu), FlattenLayer(), Dense)` with the canonical weights."""
    conv = need("luxjax", "Conv", "issue 3, branch `zoo`")
    raise NotMeasured(f"{conv.__name__} landed; wire its parameter layout into the benchmark")


def transformer(params, heads):
    """Two pre-LN blocks of `LayerNorm`, `MultiHeadAttention`, `Dense`, with the canonical weights."""
    need("luxjax", "LayerNorm", "issue 3, branches `zoo`/`zoo2`")
    need("luxjax", "MultiHeadAttention", "issue 3, branches `zoo`/`zoo2`")
    raise NotMeasured("LayerNorm and MultiHeadAttention landed; wire their parameter layout into the benchmark")
