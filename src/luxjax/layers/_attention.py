"""`MultiHeadAttention`: scaled dot-product attention over several heads."""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from ..core import ConfigError, ContainerLayer, Layer, ShapeError, check_layer_argument
from ._dense import Dense
from ._util import check_positive, float_dtype, in_dtype_of, zeros


class MultiHeadAttention(ContainerLayer):
    """Multi-head scaled dot-product attention, with the math of PyTorch's `nn.MultiheadAttention`.

    For each head `h` (of `head_dims = dims // num_heads` features)::

        weights_h = softmax(q_h @ k_h.T / sqrt(head_dims)  where mask, else -large)
        y = out_proj(concat_h(weights_h @ v_h))

    with `q = q_proj(query)`, `k = k_proj(key)`, `v = v_proj(value)`.

    Args:
        dims: feature size of queries, keys, values and the output.
        num_heads: number of heads; must divide `dims`.
        use_bias: whether the four projections have biases.
        return_weights: if `True` the output is `(y, weights)` with the attention weights of
            shape `(batch, num_heads, q_len, kv_len)`; default `False`, so the layer chains.
        q_proj, k_proj, v_proj, out_proj: the four projections; by default (`None`) each is
            `Dense(dims => dims)` with a zero-initialised bias. Pass other layers mapping `dims`
            features to `dims` features (an adapter, a frozen layer) to replace them.

    Inputs, by position (a model is called as `model(x, ps, st)`, so the mask travels inside
    the input):

    - `x`: self-attention, `query = key = value = x` of shape `(batch, len, dims)`;
    - `(q, kv)`: cross-attention, `key = value = kv`;
    - `(q, k, v)`: `q` of shape `(batch, q_len, dims)`, `k` and `v` of `(batch, kv_len, dims)`;
    - `(q, k, v, mask)`: as above with a boolean `mask` broadcastable (NumPy rules) to
      `(batch, num_heads, q_len, kv_len)`; **`True` means attend**. This is the opposite of
      PyTorch's boolean `attn_mask`/`key_padding_mask`, where `True` means ignore. A mask of
      `None` means no mask. A query whose keys are all masked out attends to every key
      uniformly instead of giving NaN (PyTorch gives NaN).

    Returns `y` of shape `(batch, q_len, dims)` (or `(y, weights)`, see `return_weights`).

    `ps`: `{"q_proj": P, "k_proj": P, "v_proj": P, "out_proj": P}` with each
    `P = {"weight": (dims, dims), "bias": (dims,)}` (the children are `Dense(dims => dims)`
    layers, so freezing and `layer_map` reach each projection). PyTorch's `in_proj_weight`
    is the three weights stacked `[q; k; v]`. Weights start uniform on
    `[-1/sqrt(dims), 1/sqrt(dims)]` (Lux's Dense default), biases at zero (as PyTorch).
    `st`: one empty entry per projection. There is no attention dropout: put a `Dropout`
    after the layer if you need one.

    Example:
        >>> import jax, jax.numpy as jnp, luxjax as lx
        >>> model = lx.MultiHeadAttention(8, 2)
        >>> model
        MultiHeadAttention(8, num_heads=2)
        >>> ps, st = lx.setup(jax.random.key(0), model)
        >>> x = jnp.ones((3, 5, 8))
        >>> causal = jnp.tril(jnp.ones((5, 5), dtype=bool))
        >>> model((x, x, x, causal), ps, st)[0].shape
        (3, 5, 8)
    """

    dims: int
    num_heads: int
    _: dataclasses.KW_ONLY
    use_bias: bool = True
    return_weights: bool = False
    q_proj: Layer | None = None
    k_proj: Layer | None = None
    v_proj: Layer | None = None
    out_proj: Layer | None = None

    def __post_init__(self) -> None:
        check_positive(self, "dims", "num_heads")
        if self.dims % self.num_heads:
            raise ConfigError(
                f"MultiHeadAttention: `dims` ({self.dims}) must be divisible by `num_heads` ({self.num_heads}); "
                f"each head gets dims // num_heads features."
            )
        # A module-level initialiser keeps equal configurations equal (layers compare by value).
        default = Dense(self.dims, self.dims, use_bias=self.use_bias, init_bias=zeros)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            given = getattr(self, name)
            setattr(self, name, default if given is None else check_layer_argument(type(self).__name__, given, name))

    def _inputs(self, x: Any) -> tuple[jax.Array, jax.Array, jax.Array, Any]:
        if not isinstance(x, tuple | list):
            return x, x, x, None
        if len(x) == 2:
            return x[0], x[1], x[1], None
        if len(x) in (3, 4):
            return x[0], x[1], x[2], (x[3] if len(x) == 4 else None)
        raise ShapeError(
            self, f"expected `x`, `(q, kv)`, `(q, k, v)` or `(q, k, v, mask)`, got a tuple of length {len(x)}."
        )

    def _check(self, q: Any, k: Any, v: Any) -> None:
        for name, a in (("query", q), ("key", k), ("value", v)):
            if jnp.ndim(a) != 3 or jnp.shape(a)[-1] != self.dims:
                raise ShapeError(self, f"expected {name} of shape (batch, len, {self.dims}), got shape {jnp.shape(a)}.")
        if jnp.shape(k)[:2] != jnp.shape(v)[:2] or jnp.shape(q)[0] != jnp.shape(k)[0]:
            raise ShapeError(
                self,
                f"expected query (batch, q_len, dims) and key/value (batch, kv_len, dims) with the same batch "
                f"and key/value of the same length, got shapes {jnp.shape(q)}, {jnp.shape(k)}, {jnp.shape(v)}.",
            )

    def _mask(self, mask: Any, expected: tuple[int, ...]) -> jax.Array:
        shape = jnp.shape(mask)
        fits = len(shape) <= 4 and all(m in (1, e) for m, e in zip(shape[::-1], expected[::-1]))
        if not fits or jnp.result_type(mask) != jnp.bool_:
            raise ShapeError(
                self,
                f"expected a boolean mask broadcastable to (batch, num_heads, q_len, kv_len) = {expected} "
                f"(True = attend), got shape {shape} and dtype {jnp.result_type(mask)}.",
            )
        return jnp.broadcast_to(jnp.reshape(mask, (1,) * (4 - len(shape)) + shape), expected)

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        query, key, value, mask = self._inputs(x)
        self._check(query, key, value)
        batch, q_len, kv_len = query.shape[0], query.shape[1], key.shape[1]
        heads, head_dims = self.num_heads, self.dims // self.num_heads
        new_st = {}
        q, new_st["q_proj"] = self.call("q_proj", query, ps, st)
        k, new_st["k_proj"] = self.call("k_proj", key, ps, st)
        v, new_st["v_proj"] = self.call("v_proj", value, ps, st)
        q = jnp.reshape(q, (batch, q_len, heads, head_dims))
        k = jnp.reshape(k, (batch, kv_len, heads, head_dims))
        v = jnp.reshape(v, (batch, kv_len, heads, head_dims))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dims)
        # The softmax runs in float32 (or wider) under a bfloat16/float16 policy, then back to v's dtype.
        scores = scores.astype(float_dtype(scores))
        if mask is not None:
            mask = self._mask(mask, (batch, heads, q_len, kv_len))
            scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(in_dtype_of(v))
        attended = jnp.reshape(jnp.einsum("bhqk,bkhd->bqhd", weights, v), (batch, q_len, self.dims))
        y, new_st["out_proj"] = self.call("out_proj", attended, ps, st)
        return ((y, weights) if self.return_weights else y), new_st

    def display_args(self) -> list[str]:
        extra = ["return_weights = True"] if self.return_weights else []
        return [f"num_heads = {self.num_heads}", *extra]

    def __repr__(self) -> str:
        bias = ", use_bias=False" if not self.use_bias else ""
        weights = ", return_weights=True" if self.return_weights else ""
        return f"MultiHeadAttention({self.dims}, num_heads={self.num_heads}{bias}{weights})"
