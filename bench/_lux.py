"""luxjax: the same models as layers plus `ps`/`st` trees, trained with a user-written `jax.jit`
step and with luxjax's own `luxjax.training.single_train_step`."""

import jax
import jax.numpy as jnp
import optax

import luxjax as lx

from ._harness import NotMeasured
from ._workloads import LEARNING_RATE


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


def step_runner(model, ps, st, loss, batch, wrap=None, donate=False, flops=False):
    """The train step a user writes (as in examples/): `jax.value_and_grad` of the model call,
    optax adam, `jax.jit` over a closure of the model; `wrap` wraps the jitted step. With
    `donate`, the step donates `ps`, `st` and the optimizer state to XLA. With `flops`, the
    returned `step` has a `flops` attribute: the step's floating-point operations as XLA's cost
    analysis of the lowered step counts them."""
    tx = optax.adam(LEARNING_RATE)

    def train_step(ps, st, opt_state, x, y):
        def loss_fn(ps):
            out, new_st = model(x, ps, st)
            return loss(out, y), new_st

        (value, st), grads = jax.value_and_grad(loss_fn, has_aux=True)(ps)
        updates, opt_state = tx.update(grads, opt_state, ps)
        return optax.apply_updates(ps, updates), st, opt_state, value

    train_step = jax.jit(train_step, donate_argnums=(0, 1, 2) if donate else ())
    state = [ps, st, tx.init(ps)]
    count = _flops(train_step.lower(*state, *batch)) if flops else None
    if wrap is not None:
        train_step = wrap(train_step)

    def step():
        state[0], state[1], state[2], value = train_step(state[0], state[1], state[2], *batch)
        return value

    step.flops = count
    return step


def _flops(lowered):
    """The `flops` entry of XLA's cost analysis (a dict, or a list of one dict in older JAX)."""
    analysis = lowered.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return (analysis or {}).get("flops")


def train_state_runner(model, ps, st, loss, batch):
    """luxjax's own helper: `TrainState` + `single_train_step(objective, data, ts, return_gradients=False)`.

    The loop does not look at the gradients (nor do the other implementations return them),
    so it asks for none, as a training loop would.
    """

    def objective(model, ps, st, data):
        x, y = data
        out, st = model(x, ps, st)
        return loss(out, y), st, {}

    holder = [lx.training.TrainState(model, ps, st, optax.adam(LEARNING_RATE))]

    def step():
        _, value, _, holder[0] = lx.training.single_train_step(objective, batch, holder[0], return_gradients=False)
        return value

    return step


def freeze_backbone(model, ps, st):
    """Freezes every child but the last: `freeze(model, ps, st, ("layer_1", ..., "layer_{n-1}"))`."""
    return lx.experimental.freeze(model, ps, st, tuple(model.children())[:-1])


def debug(model):
    """`debug_mode(model, nan_check="both")`: NaN checks in the forward and the backward pass."""
    return lx.experimental.debug_mode(model, nan_check="both")


def raise_nan_errors(fn):
    """luxjax's helper that waits for each call and re-raises a NaN found under jit as `NaNError`."""
    return lx.experimental.raise_nan_errors(fn)


def cnn(params):
    """`Chain(Conv(3x3, relu), Conv(3x3, relu), FlattenLayer(), Dense)` with the canonical weights.

    luxjax's `Conv` is a cross-correlation with an HWIO weight, like the canonical layout.
    """
    layers, ps = [], {}
    for i, p in enumerate(params["convs"]):
        kh, kw, c_in, c_out = p["kernel"].shape
        layers.append(lx.Conv((kh, kw), c_in, c_out, jax.nn.relu))
        ps[f"layer_{i + 1}"] = {"weight": jnp.asarray(p["kernel"]), "bias": jnp.asarray(p["bias"])}
    n = len(layers)
    layers += [lx.FlattenLayer(), lx.Dense(*params["head"]["weight"].shape[::-1])]
    ps[f"layer_{n + 1}"] = {}
    ps[f"layer_{n + 2}"] = _dense_ps(params["head"])
    return _checked(lx.Chain(*layers), ps)


def transformer(params, heads):
    """Pre-LN blocks: `SkipConnection(Chain(LayerNorm, MultiHeadAttention), +)` then
    `SkipConnection(Chain(LayerNorm, Dense(gelu), Dense), +)`, with the canonical weights."""
    blocks, ps = [], {}
    for i, p in enumerate(params):
        d, hidden = p["ln1"]["scale"].shape[0], p["fc1"]["weight"].shape[0]
        attn = lx.Chain(ln=lx.LayerNorm(d), mha=lx.MultiHeadAttention(d, heads))
        mlp = lx.Chain(ln=lx.LayerNorm(d), fc1=lx.Dense(d, hidden, jax.nn.gelu), fc2=lx.Dense(hidden, d))
        blocks.append(lx.Chain(attn=lx.SkipConnection(attn, jnp.add), mlp=lx.SkipConnection(mlp, jnp.add)))
        projections = {f"{n}_proj": _dense_ps(p["attn"][n]) for n in "qkv"} | {"out_proj": _dense_ps(p["attn"]["o"])}
        ps[f"layer_{i + 1}"] = {
            "attn": {"ln": _ln_ps(p["ln1"]), "mha": projections},
            "mlp": {"ln": _ln_ps(p["ln2"]), "fc1": _dense_ps(p["fc1"]), "fc2": _dense_ps(p["fc2"])},
        }
    return _checked(lx.Chain(*blocks), ps)


def stacked(model, ps, st, remat=False):
    """The unrolled blocks of `transformer` as one `Stacked` (optionally each block under `Remat`), same values."""
    model, ps, st = lx.Stacked.from_chain(model, ps, st)
    return (lx.Stacked(lx.Remat(model.block), model.n) if remat else model), ps, st


def _ln_ps(p):
    return {"scale": jnp.asarray(p["scale"]), "bias": jnp.asarray(p["bias"])}


def _checked(model, ps):
    """`(model, ps, st)` after checking that `ps` has exactly the structure and shapes `setup` gives."""
    fresh, st = lx.setup(jax.random.key(0), model)
    shapes = lambda tree: jax.tree.map(jnp.shape, tree)  # noqa: E731
    if jax.tree.structure(fresh) != jax.tree.structure(ps) or shapes(fresh) != shapes(ps):
        raise NotMeasured(f"luxjax's parameter layout changed: setup gives {shapes(fresh)}, bench built {shapes(ps)}")
    return model, ps, st
