"""Training helpers after Lux's `Lux.Training`: a train state, compiled train and eval steps, checkpoints.

Checkpoints are one safetensors file on one host (`save`, `save_train_state`), or an Orbax
folder written shard by shard for sharded states (`save_sharded`, `save_train_state_sharded`).
Ties between parameters (`luxjax.experimental.share_parameters`) survive all of them.
"""

from ._checkpoint import load as load
from ._checkpoint import load_train_state as load_train_state
from ._checkpoint import save as save
from ._checkpoint import save_train_state as save_train_state
from ._flatten import flatten_parameters as flatten_parameters
from ._loss_scale import dynamic_loss_scale as dynamic_loss_scale
from ._sharded import load_sharded as load_sharded
from ._sharded import load_train_state_sharded as load_train_state_sharded
from ._sharded import save_sharded as save_sharded
from ._sharded import save_train_state_sharded as save_train_state_sharded
from ._step import apply_gradients as apply_gradients
from ._step import compute_gradients as compute_gradients
from ._step import eval_step as eval_step
from ._step import single_train_step as single_train_step
from ._train_state import TrainState as TrainState
