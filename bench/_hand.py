"""Hand-written JAX: parameters in plain dicts and lists, forward passes written out, `jax.jit`."""

import jax
import jax.numpy as jnp
import optax
from jax.experimental import checkify

from ._harness import shared
from ._workloads import LEARNING_RATE, LN_EPS

# ---------------------------------------------------------------- models


def dense(p, x):
    return x @ p["weight"].T + p["bias"]


def mlp(params, x):
    for p in params[:-1]:
        x = jax.nn.relu(dense(p, x))
    return dense(params[-1], x)


def cnn(params, x):
    for p in params["convs"]:
        x = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jax.nn.relu(x + p["bias"])
    return dense(params["head"], jnp.reshape(x, (x.shape[0], -1)))


def layer_norm(p, x):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LN_EPS) * p["scale"] + p["bias"]


def attention(p, x, heads):
    b, t, d = x.shape
    q, k, v = (jnp.reshape(dense(p[n], x), (b, t, heads, d // heads)) for n in "qkv")
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(d // heads))
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
    return dense(p["o"], jnp.reshape(out, (b, t, d)))


def transformer(blocks, x, heads):
    for p in blocks:
        x = x + attention(p["attn"], layer_norm(p["ln1"], x), heads)
        x = x + dense(p["fc2"], jax.nn.gelu(dense(p["fc1"], layer_norm(p["ln2"], x))))
    return x


def cross_entropy(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def mse(out, target):
    return jnp.mean(jnp.square(out - target))


# ---------------------------------------------------------------- steps


def _step_fn(loss_fn):
    tx = optax.adam(LEARNING_RATE)

    def train_step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, train_step


def _jitted(loss_fn):
    tx, train_step = _step_fn(loss_fn)
    return tx, jax.jit(train_step)


def _checkified(loss_fn):
    tx, train_step = _step_fn(loss_fn)
    return tx, jax.jit(checkify.checkify(train_step, errors=checkify.nan_checks))


def runner(loss_fn, params, batch):
    """The plain jitted adam step on `params`; returns `step()` giving the loss."""
    tx, train_step = shared(("jax", loss_fn), lambda: _jitted(loss_fn))
    state = [params, tx.init(params)]

    def step():
        state[0], state[1], loss = train_step(state[0], state[1], batch)
        return loss

    return step


def checkify_runner(loss_fn, params, batch):
    """The same step under `checkify` with NaN checks (forward and backward); the error is thrown each step."""
    tx, train_step = shared(("jax checkify", loss_fn), lambda: _checkified(loss_fn))
    state = [params, tx.init(params)]

    def step():
        err, (state[0], state[1], loss) = train_step(state[0], state[1], batch)
        err.throw()
        return loss

    return step


def frozen_mlp_runner(params, batch):
    """Fine-tuning: gradient and adam only for the last layer; the backbone is a constant argument."""
    tx = optax.adam(LEARNING_RATE)
    backbone, head = params[:-1], params[-1]

    @jax.jit
    def train_step(head, opt_state, backbone, x, y):
        loss, grads = jax.value_and_grad(lambda h: cross_entropy(mlp([*backbone, h], x), y))(head)
        updates, opt_state = tx.update(grads, opt_state, head)
        return optax.apply_updates(head, updates), opt_state, loss

    state = [head, tx.init(head)]

    def step():
        state[0], state[1], loss = train_step(state[0], state[1], backbone, *batch)
        return loss

    return step


def mlp_loss(params, x, y):
    return cross_entropy(mlp(params, x), y)


def cnn_loss(params, x, y):
    return cross_entropy(cnn(params, x), y)


def transformer_loss(heads):
    def loss(params, x, target):
        return mse(transformer(params, x, heads), target)

    return loss
