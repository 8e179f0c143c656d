"""Equinox: the same models as `eqx.Module`s (per-example, `jax.vmap` over the batch), `eqx.filter_jit`.

Equinox convolutions are channels-first, so the CNN gets its digits as `(batch, 1, 8, 8)` and
its head's columns are permuted from the canonical `(H, W, C)` flattening order to `(C, H, W)`:
the same function of the same data.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.experimental import checkify

from ._hand import cross_entropy, mse
from ._harness import shared
from ._workloads import LEARNING_RATE, LN_EPS

_KEY = jax.random.key(0)


def _linear(p):
    n_out, n_in = p["weight"].shape
    layer = eqx.nn.Linear(n_in, n_out, key=_KEY)
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (jnp.asarray(p["weight"]), jnp.asarray(p["bias"])))


def _maybe_backward_nan(x, debug):
    return eqx.debug.backward_nan(x) if debug else x


class MLP(eqx.Module):
    layers: list
    debug: bool = eqx.field(static=True, default=False)

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = _maybe_backward_nan(jax.nn.relu(jax.vmap(layer)(x)), self.debug)
        return _maybe_backward_nan(jax.vmap(self.layers[-1])(x), self.debug)


class CNN(eqx.Module):
    convs: list
    head: eqx.nn.Linear

    def __call__(self, x):
        def one(x):
            for conv in self.convs:
                x = jax.nn.relu(conv(x))
            return self.head(jnp.reshape(x, (-1,)))

        return jax.vmap(one)(x)


class Block(eqx.Module):
    ln1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear

    def __call__(self, x):  # (seq, d)
        h = jax.vmap(self.ln1)(x)
        x = x + self.attn(h, h, h)
        h = jax.vmap(self.fc1)(jax.vmap(self.ln2)(x))
        return x + jax.vmap(self.fc2)(jax.nn.gelu(h))


class Transformer(eqx.Module):
    blocks: list

    def __call__(self, x):
        def one(x):
            for block in self.blocks:
                x = block(x)
            return x

        return jax.vmap(one)(x)


def _layer_norm(p):
    ln = eqx.nn.LayerNorm(p["scale"].shape[0], eps=LN_EPS)
    return eqx.tree_at(lambda m: (m.weight, m.bias), ln, (jnp.asarray(p["scale"]), jnp.asarray(p["bias"])))


def _block(p, heads):
    d = p["ln1"]["scale"].shape[0]
    attn = eqx.nn.MultiheadAttention(
        heads, d, use_query_bias=True, use_key_bias=True, use_value_bias=True, use_output_bias=True, key=_KEY
    )
    attn = eqx.tree_at(
        lambda m: (m.query_proj, m.key_proj, m.value_proj, m.output_proj),
        attn,
        tuple(_linear(p["attn"][n]) for n in "qkvo"),
    )
    return Block(_layer_norm(p["ln1"]), attn, _layer_norm(p["ln2"]), _linear(p["fc1"]), _linear(p["fc2"]))


def _conv(p):
    _, _, c_in, c_out = p["kernel"].shape
    conv = eqx.nn.Conv2d(c_in, c_out, 3, key=_KEY)
    kernel = jnp.asarray(p["kernel"].transpose(3, 2, 0, 1))  # HWIO -> OIHW
    return eqx.tree_at(lambda m: (m.weight, m.bias), conv, (kernel, jnp.asarray(p["bias"]).reshape(c_out, 1, 1)))


def cnn_head(p, side, channels):
    """Permute the canonical head's columns from (H, W, C) order to Equinox's (C, H, W)."""
    w = p["weight"].reshape(-1, side, side, channels).transpose(0, 3, 1, 2).reshape(p["weight"].shape)
    return _linear({"weight": w, "bias": p["bias"]})


def build(kind, params, heads=None, side=None, debug=False):
    if kind == "mlp":
        return MLP([_linear(p) for p in params], debug), cross_entropy
    if kind == "cnn":
        channels = params["convs"][-1]["kernel"].shape[-1]
        return CNN([_conv(p) for p in params["convs"]], cnn_head(params["head"], side, channels)), cross_entropy
    return Transformer([_block(p, heads) for p in params]), mse


def _jit(train_step, check_nans):
    if not check_nans:
        return eqx.filter_jit(train_step)
    checked = eqx.filter_jit(checkify.checkify(train_step, errors=checkify.nan_checks))

    def thrown(*args):
        err, out = checked(*args)
        err.throw()
        return out

    return thrown


def _step(loss, check_nans):
    tx = optax.adam(LEARNING_RATE)

    def train_step(model, opt_state, x, y):
        value, grads = eqx.filter_value_and_grad(lambda m: loss(m(x), y))(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, value

    return tx, _jit(train_step, check_nans)


def runner(model, loss, batch, check_nans=False):
    """Equinox's documented training step: `filter_value_and_grad` on the model, `filter_jit`."""
    tx, train_step = shared(("equinox", loss, check_nans), lambda: _step(loss, check_nans))
    state = [model, tx.init(eqx.filter(model, eqx.is_inexact_array))]

    def step():
        state[0], state[1], value = train_step(state[0], state[1], *batch)
        return value

    return step


def partitioned_runner(model, loss, batch, filter_spec):
    """Equinox's freezing recipe: `eqx.partition` by `filter_spec`, gradient w.r.t. the trainable part only."""
    tx = optax.adam(LEARNING_RATE)
    diff, static = eqx.partition(model, filter_spec)

    @eqx.filter_jit
    def train_step(diff, static, opt_state, x, y):
        value, grads = eqx.filter_value_and_grad(lambda d: loss(eqx.combine(d, static)(x), y))(diff)
        updates, opt_state = tx.update(grads, opt_state, diff)
        return eqx.apply_updates(diff, updates), opt_state, value

    state = [diff, tx.init(diff)]

    def step():
        state[0], state[1], value = train_step(state[0], static, state[1], *batch)
        return value

    return step


def head_only(model):
    """Filter spec with only the MLP's last layer trainable (Equinox's documented freezing recipe)."""
    spec = jax.tree.map(lambda _: False, model)
    return eqx.tree_at(lambda m: m.layers[-1], spec, jax.tree.map(eqx.is_inexact_array, model.layers[-1]))
