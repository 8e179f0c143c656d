"""Random nested models for the model-surgery property tests, and a small stateful layer."""

import functools

import jax
import jax.numpy as jnp
from hypothesis import strategies as hs

import luxjax as lx

DIMS = 2


class RunningMean(lx.Layer):
    """A stateful layer: adds a bias and tracks the running mean of its input while training."""

    dims: int
    momentum: float = 0.5

    def init_params(self, key):
        return {"shift": jax.random.normal(key, (self.dims,))}

    def init_state(self, key):
        del key
        return {"mean": jnp.zeros((self.dims,)), "training": lx.Training(True)}

    def __call__(self, x, ps, st):
        with jax.named_scope("RunningMean"):
            if st["training"]:
                mean = (1 - self.momentum) * st["mean"] + self.momentum * jnp.mean(x, axis=0)
                st = {**st, "mean": mean}
            return x + jnp.reshape(ps["shift"], (1, -1)), st


class Pair(lx.ContainerLayer):
    """A user-defined container with fields `dense` and `conv` (run one after the other)."""

    dense: lx.Layer
    conv: lx.Layer

    def __call__(self, x, ps, st):
        y, st_dense = self.call("dense", x, ps, st)
        y, st_conv = self.call("conv", y, ps, st)
        return y, {"dense": st_dense, "conv": st_conv}


class Scaled(lx.WrapperLayer):
    """A user-defined wrapper: doubles its layer's output."""

    layer: lx.Layer

    def __call__(self, x, ps, st):
        y, st = self.layer(x, ps, st)
        return 2 * y, st


class Gated(lx.ContainerLayer):
    """A container with a parameter of its own (`gate`) beside its children."""

    left: lx.Layer
    right: lx.Layer

    def init_params(self, key):
        key, own = jax.random.split(key)
        return {**super().init_params(key), "gate": jax.random.uniform(own, (DIMS,))}

    def __call__(self, x, ps, st):
        a, st_left = self.call("left", x, ps, st)
        b, st_right = self.call("right", x, ps, st)
        g = jnp.reshape(ps["gate"], (1, -1))
        return g * a + (1 - g) * b, {"left": st_left, "right": st_right}


def leaves():
    return hs.sampled_from(
        [
            lx.Dense(DIMS, DIMS),
            lx.Dense(DIMS, DIMS, jnp.tanh),
            RunningMean(DIMS),
            lx.BatchNorm(DIMS),
            lx.WrappedFunction(jnp.sin),
        ]
    )


def _extend(children):
    few = hs.lists(children, min_size=1, max_size=3)
    return hs.one_of(
        few.map(lambda ls: lx.Chain(*ls)),
        few.map(lambda ls: lx.Chain(**{f"n{i}": layer for i, layer in enumerate(ls)})),
        few.map(lambda ls: lx.Parallel(_sum, *ls)),
        children.map(lambda layer: lx.SkipConnection(layer, jnp.add)),
        hs.tuples(children, children).map(lambda ab: lx.SkipConnection(ab[0], lx.WrappedFunction(_add_pair))),
        hs.tuples(children, children).map(lambda ab: Pair(*ab)),
        hs.tuples(children, children).map(lambda ab: Gated(*ab)),
        children.map(Scaled),
    )


def _sum(*ys):
    return functools.reduce(jnp.add, ys)


def _add_pair(pair):
    return pair[0] + pair[1]


def models():
    """Random nested models on inputs of shape (batch, DIMS)."""
    return hs.recursive(leaves(), _extend, max_leaves=8)


def leaf_paths(model, path=()):
    """The paths of the leaf layers, computed from the model's structure independently of layer_map."""
    children = model.children()
    if not children:
        return [lx.KeyPath(*path)]
    out = []
    for name, child in children.items():
        out += leaf_paths(child, path if model.is_wrapper else (*path, name))
    return out
