"""Benchmarks: luxjax against hand-written JAX, Flax NNX and Equinox (`python -m bench`)."""
