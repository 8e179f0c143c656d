"""`MultiHeadAttention`: scaled dot-product attention over several heads."""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from ..core import ConfigError, ContainerLayer, Layer, ShapeError, check_layer_argument
from ._dense import Dense
from ._dropout import Dropout
from ._util import check_positive, float_dtype, in_dtype_of, zeros

_SIZES = ("key_dims", "value_dims", "qk_dims", "v_dims", "out_dims")


class MultiHeadAttention(ContainerLayer):
    """Multi-head scaled dot-product attention, with the math of PyTorch's `nn.MultiheadAttention`.

    For each head `h` (of `qk_dims // num_heads` query/key features)::

        weights_h = softmax(q_h @ k_h.T / sqrt(qk_dims // num_heads)  where mask, else -large)
        y = out_proj(concat_h(dropout(weights_h) @ v_h))

    with `q = q_proj(query)`, `k = k_proj(key)`, `v = v_proj(value)`. The attention itself is
    `jax.nn.dot_product_attention` (which picks a fused kernel on GPU) unless the weights are
    needed: with `return_weights`, with attention dropout in training mode, or when the value
    heads differ in size from the query/key heads, it is computed step by step (also for
    bfloat16/float16 inputs under `jax_numpy_dtype_promotion="strict"`, where the fused
    path's gradient mixes dtypes that strict promotion refuses). Either way the
    softmax runs in float32 and the result is cast back to the input's dtype, so a bfloat16
    input gives a bfloat16 output.

    Args:
        dims: feature size of the query input (and, by default, of every other size below).
        num_heads: number of heads; must divide `qk_dims` and `v_dims`.
        use_bias: whether the four default projections have biases.
        return_weights: if `True` the output is `(y, weights)` with the attention weights of
            shape `(batch, num_heads, q_len, kv_len)` (after dropout, as PyTorch's); default
            `False`, so the layer chains.
        key_dims, value_dims: feature sizes of the key and value inputs (PyTorch's `kdim`,
            `vdim`); default `dims`.
        qk_dims: size of the projected queries and keys; default `dims`.
        v_dims: size of the projected values; default `qk_dims`.
        out_dims: size of the output; default `dims`. Lux's most general
            `(q_in, k_in, v_in) => (qk_dim, v_dim) => out_dim` is
            `MultiHeadAttention(q_in, num_heads, key_dims=k_in, value_dims=v_in, qk_dims=qk_dim,
            v_dims=v_dim, out_dims=out_dim)`.
        is_causal: if `True` query `i` attends only to keys `j <= i` (combined with any mask).
        attention_dropout: probability of dropping an attention weight in training mode (a
            `Dropout` child, as Lux's `attention_dropout_probability`); default `0.0`, none.
        q_proj, k_proj, v_proj, out_proj: the four projections; by default (`None`) each is a
            `Dense` with a zero-initialised bias (`dims => qk_dims`, `key_dims => qk_dims`,
            `value_dims => v_dims`, `v_dims => out_dims`). Pass other layers with the same
            sizes (an adapter, a frozen layer) to replace them.

    Inputs, by position (a model is called as `model(x, ps, st)`, so the mask travels inside
    the input):

    - `x`: self-attention, `query = key = value = x` of shape `(batch, len, dims)`;
    - `(q, kv)`: cross-attention, `key = value = kv`;
    - `(q, k, v)`: `q` of shape `(batch, q_len, dims)`, `k` of `(batch, kv_len, key_dims)`
      and `v` of `(batch, kv_len, value_dims)`;
    - `(q, k, v, mask)`: as above with a boolean `mask` broadcastable (NumPy rules) to
      `(batch, num_heads, q_len, kv_len)`; **`True` means attend**. This is the opposite of
      PyTorch's boolean `attn_mask`/`key_padding_mask`, where `True` means ignore. A mask of
      `None` means no mask. A query whose keys are all masked out attends to every key
      uniformly instead of giving NaN (PyTorch gives NaN).

    Returns `y` of shape `(batch, q_len, out_dims)` (or `(y, weights)`, see `return_weights`).
    Lux returns `(y, weights)` always.

    `ps`: `{"q_proj": P, "k_proj": P, "v_proj": P, "out_proj": P}` with each
    `P = {"weight": (out, in), "bias": (out,)}` (the children are `Dense` layers, so freezing
    and `layer_map` reach each projection), plus `"attention_dropout": {}` when
    `attention_dropout > 0`. With equal sizes, PyTorch's `in_proj_weight` is the three
    weights stacked `[q; k; v]`. Weights start uniform on `[-1/sqrt(in), 1/sqrt(in)]` (Lux's
    Dense default), biases at zero (as PyTorch). `st`: one entry per child (the dropout's
    holds its key and training flag).

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
        >>> cross = lx.MultiHeadAttention(8, 2, key_dims=6, value_dims=6, out_dims=4, is_causal=True)
        >>> ps, st = lx.setup(jax.random.key(0), cross)
        >>> cross((x, jnp.ones((3, 7, 6))), ps, st)[0].shape
        (3, 5, 4)
    """

    dims: int
    num_heads: int
    _: dataclasses.KW_ONLY
    use_bias: bool = True
    return_weights: bool = False
    key_dims: int | None = None
    value_dims: int | None = None
    qk_dims: int | None = None
    v_dims: int | None = None
    out_dims: int | None = None
    is_causal: bool = False
    q_proj: Layer | None = None
    k_proj: Layer | None = None
    v_proj: Layer | None = None
    out_proj: Layer | None = None
    attention_dropout: float | Layer | None = 0.0

    def __post_init__(self) -> None:
        check_positive(self, "dims", "num_heads")
        # Each size names, in errors, the argument it came from.
        given = {name: name if getattr(self, name) is not None else "dims" for name in _SIZES}
        given["v_dims"] = "v_dims" if self.v_dims is not None else given["qk_dims"]
        for name in ("key_dims", "value_dims", "qk_dims", "out_dims"):
            if getattr(self, name) is None:
                setattr(self, name, self.dims)
        if self.v_dims is None:
            self.v_dims = self.qk_dims
        check_positive(self, *_SIZES)
        for name in ("qk_dims", "v_dims"):
            if getattr(self, name) % self.num_heads:
                raise ConfigError(
                    f"MultiHeadAttention: `{given[name]}` ({getattr(self, name)}) must be divisible by `num_heads` "
                    f"({self.num_heads}); each head gets {given[name]} // num_heads features."
                )
        # Module-level initialisers keep equal configurations equal (layers compare by value).
        sizes = {
            "q_proj": (self.dims, self.qk_dims),
            "k_proj": (self.key_dims, self.qk_dims),
            "v_proj": (self.value_dims, self.v_dims),
            "out_proj": (self.v_dims, self.out_dims),
        }
        for name, (n_in, n_out) in sizes.items():
            given = getattr(self, name)
            default = Dense(n_in, n_out, use_bias=self.use_bias, init_bias=zeros)
            setattr(self, name, default if given is None else check_layer_argument(type(self).__name__, given, name))
        p = self.attention_dropout
        if not isinstance(p, Layer) and p is not None:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise ConfigError(f"MultiHeadAttention: `attention_dropout` must be in [0, 1), got {p!r}.")
            self.attention_dropout = Dropout(p) if p > 0 else None

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
        for name, a, size in (("query", q, self.dims), ("key", k, self.key_dims), ("value", v, self.value_dims)):
            if jnp.ndim(a) != 3 or jnp.shape(a)[-1] != size:
                raise ShapeError(self, f"expected {name} of shape (batch, len, {size}), got shape {jnp.shape(a)}.")
        if jnp.shape(k)[:2] != jnp.shape(v)[:2] or jnp.shape(q)[0] != jnp.shape(k)[0]:
            raise ShapeError(
                self,
                f"expected query (batch, q_len, {self.dims}), key (batch, kv_len, {self.key_dims}) and value "
                f"(batch, kv_len, {self.value_dims}) with the same batch and key/value of the same length, "
                f"got shapes {jnp.shape(q)}, {jnp.shape(k)}, {jnp.shape(v)}.",
            )

    def _mask(self, mask: Any, expected: tuple[int, ...]) -> jax.Array | None:
        """The boolean mask (True = attend) broadcast to `expected`, with the causal mask folded in."""
        if mask is not None:
            shape = jnp.shape(mask)
            fits = len(shape) <= 4 and all(m in (1, e) for m, e in zip(shape[::-1], expected[::-1]))
            if not fits or jnp.result_type(mask) != jnp.bool_:
                raise ShapeError(
                    self,
                    f"expected a boolean mask broadcastable to (batch, num_heads, q_len, kv_len) = {expected} "
                    f"(True = attend), got shape {shape} and dtype {jnp.result_type(mask)}.",
                )
            mask = jnp.broadcast_to(jnp.reshape(mask, (1,) * (4 - len(shape)) + shape), expected)
        if self.is_causal:
            causal = jnp.broadcast_to(jnp.tril(jnp.ones(expected[2:], jnp.bool_)), expected)
            mask = causal if mask is None else mask & causal
        return mask

    def _dropping(self, st: dict) -> bool:
        """Whether attention dropout is active (a dropout child whose state is in training mode)."""
        if self.attention_dropout is None:
            return False
        child_st = st["attention_dropout"]
        return not isinstance(child_st, dict) or bool(child_st.get("training", True))

    def __call__(self, x: Any, ps: dict, st: dict) -> tuple[Any, dict]:
        query, key, value, mask = self._inputs(x)
        self._check(query, key, value)
        batch, q_len, kv_len = query.shape[0], query.shape[1], key.shape[1]
        heads = self.num_heads
        assert self.qk_dims is not None and self.v_dims is not None
        qk_head, v_head = self.qk_dims // heads, self.v_dims // heads
        new_st = {}
        q, new_st["q_proj"] = self.call("q_proj", query, ps, st)
        k, new_st["k_proj"] = self.call("k_proj", key, ps, st)
        v, new_st["v_proj"] = self.call("v_proj", value, ps, st)
        q = jnp.reshape(q, (batch, q_len, heads, qk_head))
        k = jnp.reshape(k, (batch, kv_len, heads, qk_head))
        v = jnp.reshape(v, (batch, kv_len, heads, v_head))
        mask = self._mask(mask, (batch, heads, q_len, kv_len))
        if self.attention_dropout is not None:
            new_st["attention_dropout"] = st["attention_dropout"]
        weights = None
        # JAX's fused attention mixes float32 into a bfloat16/float16 computation, and its
        # gradient then fails under strict dtype promotion: there the step-by-step path runs.
        promotion = jax.config.jax_numpy_dtype_promotion  # pyright: ignore[reportAttributeAccessIssue]
        strict = promotion == "strict"  # the current value, `jax.numpy_dtype_promotion` context included
        strict_low = strict and jnp.finfo(q.dtype).bits < 32
        if self.return_weights or self._dropping(st) or qk_head != v_head or strict_low:
            # the softmax runs in float32 (or wider) under a bfloat16/float16 policy, then back to v's dtype
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)
            scores = scores.astype(float_dtype(scores)) / math.sqrt(qk_head)
            if mask is not None:
                scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
            weights = jax.nn.softmax(scores, axis=-1).astype(in_dtype_of(v))
            if self.attention_dropout is not None:
                weights, new_st["attention_dropout"] = self.call("attention_dropout", weights, ps, st)
            attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        else:
            attended = jax.nn.dot_product_attention(q, k, v, mask=mask)
        attended = jnp.reshape(attended, (batch, q_len, self.v_dims))
        y, new_st["out_proj"] = self.call("out_proj", attended, ps, st)
        return ((y, weights) if self.return_weights else y), new_st

    def _options(self) -> list[str]:
        """The non-default options, as `name=value`."""
        sizes = {"key_dims": self.dims, "value_dims": self.dims, "qk_dims": self.dims, "v_dims": self.qk_dims}
        options = [f"{name}={getattr(self, name)}" for name, default in sizes.items() if getattr(self, name) != default]
        options += [f"out_dims={self.out_dims}"] if self.out_dims != self.dims else []
        options += ["is_causal=True"] if self.is_causal else []
        if isinstance(self.attention_dropout, Dropout):
            options.append(f"attention_dropout={self.attention_dropout.p}")
        return options

    def display_args(self) -> list[str]:
        extra = ["return_weights = True"] if self.return_weights else []
        return [f"num_heads = {self.num_heads}", *extra, *(o.replace("=", " = ") for o in self._options())]

    def __repr__(self) -> str:
        bias = ", use_bias=False" if not self.use_bias else ""
        weights = ", return_weights=True" if self.return_weights else ""
        options = "".join(f", {o}" for o in self._options())
        return f"MultiHeadAttention({self.dims}, num_heads={self.num_heads}{bias}{weights}{options})"
