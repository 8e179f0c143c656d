"""The seven workloads as lists of cells (or, for workload 7, timed operations)."""

import dataclasses
import io

import jax
import jax.numpy as jnp

import luxjax as lx

from . import _eqx, _hand, _lux, _nnx
from ._harness import Cell, NotMeasured
from ._workloads import Sizes, cnn_data, mlp_data, transformer_data

WORKLOADS = ("tiny", "medium", "cnn", "transformer", "frozen", "debug", "structure", "deep")
RACES = ("tiny", "medium", "cnn", "transformer")  # workloads where every implementation races every other
TITLES = {
    "tiny": "1. tiny MLP",
    "medium": "2. medium MLP",
    "cnn": "3. CNN (digits)",
    "transformer": "4. transformer",
    "frozen": "5. frozen backbone",
    "debug": "6. debug mode",
    "structure": "7. structure x{n}",
    "deep": "8. deep transformer",
}

JAX, NNX_JIT, NNX_SM, EQX = "jax (hand-written)", "nnx.jit", "nnx split/merge", "equinox filter_jit"
NNX_FN = "nnx functional (merge in loss)"
LUX_STEP, LUX_TS = "luxjax (user jit step)", "luxjax single_train_step"
LUX_DONATE = "luxjax (user jit step, donating ps/st/opt)"
LUX_BF16 = "luxjax (user jit step, bf16 compute)"  # lx.mixed_precision(model): float32 master parameters
LUX_UNROLLED, LUX_STACKED, LUX_REMAT = "luxjax Chain (unrolled)", "luxjax Stacked", "luxjax Stacked(Remat(block))"


def _device(*arrays):
    return tuple(jnp.asarray(a) for a in arrays)


def _peer_cells(workload, kind, params, batch, hand_loss, heads=None, eqx_batch=None, side=None):
    nnx_model = lambda: _nnx.build(kind, params, heads)  # noqa: E731
    eqx_model = lambda: _eqx.build(kind, params, heads, side)  # noqa: E731
    return [
        Cell(workload, JAX, lambda: _hand.runner(hand_loss, jax.tree.map(jnp.asarray, params), batch), JAX),
        Cell(workload, NNX_JIT, lambda: _nnx.jit_runner(*nnx_model(), batch), JAX),
        Cell(workload, NNX_SM, lambda: _nnx.split_merge_runner(*nnx_model(), batch), JAX),
        Cell(workload, EQX, lambda: _eqx.runner(*eqx_model(), eqx_batch or batch), JAX),
    ]


def _lux_cells(workload, build, loss, batch, flops=False):
    def user_step():
        return _lux.step_runner(*build(), loss, batch, flops=flops)

    def helper():
        return _lux.train_state_runner(*build(), loss, batch)

    return [Cell(workload, LUX_STEP, user_step, JAX, peer=False), Cell(workload, LUX_TS, helper, JAX, peer=False)]


def mlp_cells(workload, spec, seed):
    params, x, y = mlp_data(spec, seed)
    batch = _device(x, y)
    cells = _peer_cells(workload, "mlp", params, batch, _hand.mlp_loss)
    return cells + _lux_cells(workload, lambda: _lux.mlp(params), _hand.cross_entropy, batch)


def cnn_cells(spec, seed):
    params, x, y = cnn_data(spec, seed)
    batch = _device(x, y)
    eqx_batch = _device(x.transpose(0, 3, 1, 2), y)
    cells = _peer_cells("cnn", "cnn", params, batch, _hand.cnn_loss, eqx_batch=eqx_batch, side=x.shape[1] - 4)
    return cells + _lux_cells("cnn", lambda: _lux.cnn(params), _hand.cross_entropy, batch)


def transformer_cells(spec, seed):
    """Workload 4, plus luxjax's float32 step against the same step under a bfloat16 policy, with TFLOP/s."""
    params, x, target = transformer_data(spec, seed)
    batch = _device(x, target)
    cells = _peer_cells("transformer", "transformer", params, batch, _hand.transformer_loss(spec.heads), spec.heads)

    def bf16_step():
        model, ps, st = _lux.transformer(params, spec.heads)
        bf16 = lx.Precision(params=jnp.float32, compute=jnp.bfloat16, output=jnp.float32)
        return _lux.step_runner(lx.mixed_precision(model, bf16), ps, st, _hand.mse, batch, flops=True)

    lux = _lux_cells("transformer", lambda: _lux.transformer(params, spec.heads), _hand.mse, batch, flops=True)
    return [*cells, lux[0], Cell("transformer", LUX_BF16, bf16_step, LUX_STEP, peer=False), *lux[1:]]


def frozen_cells(spec, seed):
    """Workload 2 with all but the last Dense frozen; each frozen cell's reference is its library's full step."""
    params, x, y = mlp_data(spec, seed)
    batch = _device(x, y)
    w = "frozen"

    def nnx_frozen():
        model, loss = _nnx.build("mlp", params)
        return _nnx.split_merge_runner(model, loss, batch, wrt=_nnx.head_filter(model))

    def eqx_frozen():
        model, loss = _eqx.build("mlp", params)
        return _eqx.partitioned_runner(model, loss, batch, _eqx.head_only(model))

    def lux(runner, frozen, **kwargs):
        def make():
            model, ps, st = _lux.mlp(params)
            if frozen:
                model, ps, st = _lux.freeze_backbone(model, ps, st)
            return runner(model, ps, st, _hand.cross_entropy, batch, **kwargs)

        return make

    hand_params = lambda: jax.tree.map(jnp.asarray, params)  # noqa: E731
    return [
        Cell(w, JAX, lambda: _hand.runner(_hand.mlp_loss, hand_params(), batch), JAX, repeat=True),
        Cell(w, JAX + " frozen", lambda: _hand.frozen_mlp_runner(hand_params(), batch), JAX),
        Cell(
            w,
            NNX_SM,
            lambda: _nnx.split_merge_runner(*_nnx.build("mlp", params), batch),
            NNX_SM,
            repeat=True,
            slow=True,
        ),
        Cell(w, NNX_SM + " frozen (wrt=, DiffState)", nnx_frozen, NNX_SM, slow=True),
        Cell(w, EQX, lambda: _eqx.runner(*_eqx.build("mlp", params), batch), EQX, repeat=True, slow=True),
        Cell(w, EQX + " frozen (partition)", eqx_frozen, EQX, slow=True),
        Cell(w, LUX_STEP, lux(_lux.step_runner, False), LUX_STEP, peer=False, repeat=True),
        Cell(w, LUX_STEP + " frozen (freeze)", lux(_lux.step_runner, True), LUX_STEP, peer=False),
        Cell(w, LUX_DONATE, lux(_lux.step_runner, False, donate=True), LUX_DONATE, peer=False),
        Cell(w, LUX_DONATE + " frozen (freeze)", lux(_lux.step_runner, True, donate=True), LUX_DONATE, peer=False),
        Cell(w, LUX_TS, lux(_lux.train_state_runner, False), LUX_TS, peer=False, repeat=True),
        Cell(w, LUX_TS + " frozen (freeze)", lux(_lux.train_state_runner, True), LUX_TS, peer=False),
    ]


def debug_cells(spec, seed):
    """Workload 2 with NaN checks in the forward and backward pass; reference: the same library's plain step."""
    params, x, y = mlp_data(spec, seed)
    batch = _device(x, y)
    w = "debug"
    hand_params = lambda: jax.tree.map(jnp.asarray, params)  # noqa: E731

    def lux_debug(wrap=None):
        def make():
            model, ps, st = _lux.mlp(params)
            return _lux.step_runner(_lux.debug(model), ps, st, _hand.cross_entropy, batch, wrap)

        return make

    return [
        Cell(w, JAX, lambda: _hand.runner(_hand.mlp_loss, hand_params(), batch), JAX, repeat=True),
        Cell(w, JAX + " + checkify", lambda: _hand.checkify_runner(_hand.mlp_loss, hand_params(), batch), JAX),
        Cell(w, NNX_FN, lambda: _nnx.functional_runner(*_nnx.build("mlp", params), batch), NNX_FN, slow=True),
        Cell(
            w,
            NNX_FN + " + checkify",
            lambda: _nnx.functional_runner(*_nnx.build("mlp", params), batch, check_nans=True),
            NNX_FN,
            slow=True,
        ),
        Cell(w, EQX, lambda: _eqx.runner(*_eqx.build("mlp", params), batch), EQX, repeat=True, slow=True),
        Cell(
            w,
            EQX + " + checkify",
            lambda: _eqx.runner(*_eqx.build("mlp", params), batch, check_nans=True),
            EQX,
            slow=True,
        ),
        Cell(
            w,
            EQX + " + backward_nan",
            lambda: _eqx.runner(*_eqx.build("mlp", params, debug=True), batch),
            EQX,
            slow=True,
        ),
        Cell(
            w, LUX_STEP, lambda: _lux.step_runner(*_lux.mlp(params), _hand.cross_entropy, batch), LUX_STEP, repeat=True
        ),
        Cell(w, LUX_STEP + " debug_mode", lux_debug(), LUX_STEP),
        Cell(w, LUX_STEP + " debug_mode + raise_nan_errors", lux_debug(_lux.raise_nan_errors), LUX_STEP),
    ]


def structure_ops(n_layers):
    """luxjax's model-level operations on a Chain of `n_layers` Dense layers."""
    import luxjax as lx

    model = lx.Chain(*[lx.Dense(32, 32, jax.nn.relu) for _ in range(n_layers)])
    ps, st = lx.setup(jax.random.key(0), model)

    def layer_map():
        return lx.experimental.layer_map(lambda layer, p, s, path: (layer, p, s), model, ps, st)

    def debug_mode():
        return lx.experimental.debug_mode(model)

    def show():
        out = io.StringIO()
        print(model, file=out)
        return out.getvalue()

    def count():
        return lx.parameter_count(model)

    return [
        ("setup", lambda: lx.setup(jax.random.key(1), model)),
        ("layer_map (identity)", layer_map),
        ("debug_mode", debug_mode),
        ("print", show),
        ("parameter_count", count),
    ]


def deep_cells(spec, seed):
    """Workload 4's blocks, `spec.model.blocks` deep: an unrolled Chain against the same blocks stacked (and remat)."""
    params, x, target = transformer_data(spec.model, seed)
    batch = _device(x, target)
    w = "deep"

    def runner(kind):
        def make():
            model, ps, st = _lux.transformer(params, spec.model.heads)
            if kind != LUX_UNROLLED:
                model, ps, st = _lux.stacked(model, ps, st, remat=kind == LUX_REMAT)
            return _lux.step_runner(model, ps, st, _hand.mse, batch)

        return make

    return [Cell(w, kind, runner(kind), LUX_UNROLLED, peer=False) for kind in (LUX_UNROLLED, LUX_STACKED, LUX_REMAT)]


def deep_memory(spec, seed):
    """The compiled gradient's temporary memory of the stacked model with and without remat, at `memory_seq`."""
    long = dataclasses.replace(spec.model, seq=spec.memory_seq, blocks=max(2, spec.model.blocks // 3))
    params, x, target = transformer_data(long, seed)
    rows = []
    for kind in (LUX_STACKED, LUX_REMAT):
        model, ps, st = _lux.stacked(*_lux.transformer(params, long.heads), remat=kind == LUX_REMAT)

        def loss(ps, model=model, st=st):
            return _hand.mse(model(jnp.asarray(x), ps, st)[0], jnp.asarray(target))

        analysis = jax.jit(jax.grad(loss)).lower(ps).compile().memory_analysis()
        temp = getattr(analysis, "temp_size_in_bytes", None)
        rows.append({"workload": "deep", "impl": kind, "kind": "memory", "temp_bytes": temp, "config": str(long)})
    return rows


def build(workload: str, sizes: Sizes, seed: int):
    if workload in ("tiny", "medium"):
        return mlp_cells(workload, getattr(sizes, workload), seed)
    if workload == "cnn":
        return cnn_cells(sizes.cnn, seed)
    if workload == "transformer":
        return transformer_cells(sizes.transformer, seed)
    if workload == "frozen":
        return frozen_cells(sizes.medium, seed)
    if workload == "debug":
        return debug_cells(sizes.medium, seed)
    if workload == "deep":
        return deep_cells(sizes.deep, seed)
    raise NotMeasured(workload)
