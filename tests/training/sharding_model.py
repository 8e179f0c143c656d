"""The model, data and training loop the sharding tests share (imported by their subprocesses).

A small language model with everything sharding must keep (attention without biases: the key bias has
no gradient in exact arithmetic, so adam would amplify rounding noise): an embedding tied to the output
projection, attention, a `Stacked` pair of blocks and a frozen layer.
"""

import jax
import jax.numpy as jnp
import optax

import luxjax as lx
from luxjax.experimental import freeze, share_parameters
from luxjax.training import TrainState, single_train_step

VOCAB, DIMS, LEN, BATCH = 32, 16, 8, 16
TIES = (("embed.weight", "head.weight"),)


def make_model() -> lx.Layer:
    model = lx.Chain(
        embed=lx.Embedding(VOCAB, DIMS),
        attn=lx.SkipConnection(lx.MultiHeadAttention(DIMS, 4, use_bias=False), jnp.add),
        blocks=lx.Stacked(lx.Dense(DIMS, DIMS, jnp.tanh), 2),
        frozen=lx.Dense(DIMS, DIMS, jnp.tanh),
        head=lx.Dense(DIMS, VOCAB),
    )
    return freeze(model, which_params=("frozen.weight",))


def batch() -> tuple[jax.Array, jax.Array]:
    tokens = jax.random.randint(jax.random.key(1), (BATCH, LEN + 1), 0, VOCAB)
    return tokens[:, :-1], tokens[:, 1:]


def next_token_loss(model, ps, st, data):
    logits, st = model(data[0], ps, st)
    return optax.softmax_cross_entropy_with_integer_labels(logits, data[1]).mean(), st, {}


def train(model, ps, st, data, steps=10):
    """`steps` adam steps from `(ps, st)` with the embedding tied to the head; returns the state and losses."""
    ts = TrainState(model, share_parameters(ps, TIES), st, optax.adam(1e-2))
    losses = []
    for _ in range(steps):
        _, loss, _, ts = single_train_step(next_token_loss, data, ts, return_gradients=False)
        losses.append(float(jax.device_get(loss)) if jax.process_count() == 1 else loss)
    return ts, losses
