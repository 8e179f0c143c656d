"""Test configuration: JAX strict about dtype and rank promotion, as STYLE asks; hypothesis profiles.

The property tests take their number of examples from the hypothesis profile: `ci` (the
default, about 10 each, for `make test`) or `nightly` (200 each), chosen with
`HYPOTHESIS_PROFILE=nightly`.
"""

import os

import hypothesis
import jax
import jax.numpy as jnp
import pytest

import luxjax as lx

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

# a script the multi-host test starts as separate processes (it reads its arguments on import)
collect_ignore = ["tests/training/sharding_multihost.py"]

hypothesis.settings.register_profile("ci", max_examples=10, deadline=None, print_blob=True)
hypothesis.settings.register_profile("nightly", max_examples=200, deadline=None, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def key() -> jax.Array:
    return jax.random.key(0)


@pytest.fixture
def seed_model() -> lx.Layer:
    """The model of the seed's `share_parameters` example: 44 parameters, no states."""
    return lx.Chain(d1=lx.Dense(2, 4, jnp.tanh), d3=lx.Chain(l1=lx.Dense(4, 2), l2=lx.Dense(2, 4)), d2=lx.Dense(4, 2))
