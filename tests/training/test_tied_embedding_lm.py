"""A language model whose embedding and output projection share one matrix trains and stays tied."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import luxjax as lx
from luxjax.experimental import share_parameters
from luxjax.training import TrainState, single_train_step

VOCAB, DIMS = 8, 6


def lm():
    return lx.Chain(
        embed=lx.Embedding(VOCAB, DIMS, init_weight=lambda key, shape, dtype: jax.random.normal(key, shape, dtype) / 2),
        mix=lx.Dense(DIMS, DIMS, jnp.tanh),
        head=lx.Dense(DIMS, VOCAB, use_bias=False),
    )


def next_token_loss(model, ps, st, data):
    logits, st = model(data[:, :-1], ps, st)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, data[:, 1:]).mean()
    return loss, st, {}


def test_tied_embedding_lm_trains_and_stays_tied(key):
    model = lm()
    ps, st = lx.setup(key, model)
    ps = share_parameters(ps, (("embed.weight", "head.weight"),))
    start = jax.random.randint(jax.random.key(5), (16, 1), 0, VOCAB)
    data = (start + jnp.arange(7)[None, :]) % VOCAB  # each token is followed by the next one

    # the explicit reference: one matrix used for the lookup and the projection
    def reference_loss(p, data):
        h = jnp.tanh(jnp.take(p["table"], data[:, :-1], axis=0) @ p["mix_w"].T + p["mix_b"])
        logits = h @ p["table"].T
        return optax.softmax_cross_entropy_with_integer_labels(logits, data[:, 1:]).mean()

    optimizer = optax.adam(0.05)
    ref = {"table": jnp.copy(ps["embed"]["weight"]), "mix_w": jnp.copy(ps["mix"]["weight"])}
    ref["mix_b"] = jnp.copy(ps["mix"]["bias"])[None, None, :]
    ref_opt = optimizer.init(ref)

    @jax.jit
    def reference_step(p, o):
        with jax.numpy_dtype_promotion("standard"):
            loss, g = jax.value_and_grad(reference_loss)(p, data)
            updates, o = optimizer.update(g, o, p)
            return optax.apply_updates(p, updates), o, loss

    ts = TrainState(model, ps, st, optimizer)
    assert sum(x.size for x in jax.tree.leaves(ts.optimizer_state)) == 1 + 2 * (VOCAB * DIMS + DIMS * DIMS + DIMS)
    losses = []
    for _ in range(60):
        _, loss, _, ts = single_train_step(next_token_loss, data, ts)
        ref, ref_opt, ref_loss = reference_step(ref, ref_opt)
        losses.append(float(loss))
    assert losses[-1] < 0.2 * losses[0]
    np.testing.assert_allclose(losses[-1], ref_loss, rtol=1e-4)
    p = ts.parameters
    assert p["embed"]["weight"] is p["head"]["weight"]
    np.testing.assert_allclose(p["embed"]["weight"], ref["table"], rtol=1e-4, atol=1e-5)
    # the model predicts the next token
    logits, _ = model(data[:, :-1], p, st)
    assert float(jnp.mean(jnp.argmax(logits, axis=-1) == data[:, 1:])) == 1.0
