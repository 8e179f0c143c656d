"""Flax NNX: the same models as `nnx.Module`s, trained with `nnx.jit` and with split/merge + `jax.jit`.

`nnx.jit` is the style of NNX's tutorials; split/merge (one `nnx.split` before the loop, a
pure `jax.jit` step that merges and re-splits inside) is what NNX's "Performance
considerations" guide recommends to avoid its per-call graph traversal. Both are measured.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.experimental import checkify

from ._hand import cross_entropy, mse
from ._harness import shared
from ._workloads import LEARNING_RATE, LN_EPS


def _linear(p, rngs):
    n_out, n_in = p["weight"].shape
    layer = nnx.Linear(n_in, n_out, rngs=rngs)
    layer.kernel[...] = jnp.asarray(p["weight"].T)
    layer.bias[...] = jnp.asarray(p["bias"])
    return layer


class MLP(nnx.Module):
    def __init__(self, params, rngs):
        self.layers = nnx.List([_linear(p, rngs) for p in params])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)


class CNN(nnx.Module):
    def __init__(self, params, rngs):
        convs = []
        for p in params["convs"]:
            _, _, c_in, c_out = p["kernel"].shape
            conv = nnx.Conv(c_in, c_out, (3, 3), padding="VALID", rngs=rngs)
            conv.kernel[...] = jnp.asarray(p["kernel"])
            conv.bias[...] = jnp.asarray(p["bias"])
            convs.append(conv)
        self.convs = nnx.List(convs)
        self.head = _linear(params["head"], rngs)

    def __call__(self, x):
        for conv in self.convs:
            x = jax.nn.relu(conv(x))
        return self.head(jnp.reshape(x, (x.shape[0], -1)))


def _layer_norm(p, d, rngs):
    ln = nnx.LayerNorm(d, epsilon=LN_EPS, rngs=rngs)
    ln.scale[...] = jnp.asarray(p["scale"])
    ln.bias[...] = jnp.asarray(p["bias"])
    return ln


class Block(nnx.Module):
    def __init__(self, p, heads, rngs):
        d = p["ln1"]["scale"].shape[0]
        hd = d // heads
        self.ln1 = _layer_norm(p["ln1"], d, rngs)
        self.attn = nnx.MultiHeadAttention(heads, d, d, d, decode=False, rngs=rngs)
        for name, proj in (("q", self.attn.query), ("k", self.attn.key), ("v", self.attn.value)):
            proj.kernel[...] = jnp.asarray(p["attn"][name]["weight"].T.reshape(d, heads, hd))
            proj.bias[...] = jnp.asarray(p["attn"][name]["bias"].reshape(heads, hd))
        self.attn.out.kernel[...] = jnp.asarray(p["attn"]["o"]["weight"].T.reshape(heads, hd, d))
        self.attn.out.bias[...] = jnp.asarray(p["attn"]["o"]["bias"])
        self.ln2 = _layer_norm(p["ln2"], d, rngs)
        self.fc1 = _linear(p["fc1"], rngs)
        self.fc2 = _linear(p["fc2"], rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class Transformer(nnx.Module):
    def __init__(self, blocks, heads, rngs):
        self.blocks = nnx.List([Block(p, heads, rngs) for p in blocks])

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def build(kind, params, heads=None):
    rngs = nnx.Rngs(0)
    if kind == "mlp":
        return MLP(params, rngs), cross_entropy
    if kind == "cnn":
        return CNN(params, rngs), cross_entropy
    return Transformer(params, heads, rngs), mse


def head_filter(model):
    """Only the last Dense of an MLP is trainable (fine-tuning)."""
    last = len(model.layers) - 1
    return nnx.All(nnx.Param, lambda path, _: tuple(path[:2]) == ("layers", last))


def _train_step(loss, wrt):
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return loss(model(x), y)

        value, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt))(model)
        optimizer.update(model, grads)
        return value

    return train_step


def jit_runner(model, loss, batch, wrt=nnx.Param):
    """NNX's tutorial style: `nnx.jit` on a step that mutates the model and optimizer."""
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=wrt)
    train_step = nnx.jit(_train_step(loss, wrt))

    def step():
        return train_step(model, optimizer, *batch)

    return step


def _pure_step(loss, wrt):
    inner = _train_step(loss, wrt)

    def pure_step(graphdef, state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        value = inner(model, optimizer, x, y)
        return value, nnx.state((model, optimizer))

    return pure_step


def split_merge_runner(model, loss, batch, wrt=nnx.Param):
    """NNX's performance-guide style: split once, `jax.jit` a pure step that merges and splits."""
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=wrt)
    graphdef, state = nnx.split((model, optimizer))
    train_step = shared(("nnx split/merge", loss, wrt), lambda: jax.jit(_pure_step(loss, wrt)))
    holder = [state]

    def step():
        value, holder[0] = train_step(graphdef, holder[0], *batch)
        return value

    return step


def functional_runner(model, loss, batch, check_nans=False):
    """NNX used purely: `nnx.merge` inside the loss, optax on the `Param` state, no mutation.

    `checkify` needs this form: NNX refuses to mutate (`nnx.Optimizer.update`) or
    differentiate (`nnx.value_and_grad`) graph nodes under a trace it did not make.
    """
    tx = optax.adam(LEARNING_RATE)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def train_step(graphdef, params, rest, opt_state, x, y):
        def loss_fn(params):
            return loss(nnx.merge(graphdef, params, rest)(x), y)

        value, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    if check_nans:
        checked = jax.jit(checkify.checkify(train_step, errors=checkify.nan_checks))

        def run(*args):
            err, out = checked(*args)
            err.throw()
            return out

    else:
        run = jax.jit(train_step)
    state = [params, tx.init(params)]

    def step():
        state[0], state[1], value = run(graphdef, state[0], rest, state[1], *batch)
        return value

    return step
