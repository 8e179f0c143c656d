"""luxjax: explicit-parameter neural networks for JAX, with Lux's model-surgery toolkit.

A model is an immutable layer plus two plain trees, parameters `ps` and states `st`:

    >>> import jax, jax.numpy as jnp, luxjax as lx
    >>> model = lx.Chain(lx.Dense(2, 4, jnp.tanh), lx.Dense(4, 1))
    >>> ps, st = lx.setup(jax.random.key(0), model)
    >>> y, st = model(jnp.ones((8, 2)), ps, st)
    >>> y.shape
    (8, 1)
"""

from . import experimental as experimental
from . import training as training
from .core import CheckpointError as CheckpointError
from .core import ConfigError as ConfigError
from .core import ContainerLayer as ContainerLayer
from .core import KeyPath as KeyPath
from .core import Layer as Layer
from .core import LayerError as LayerError
from .core import NaNError as NaNError
from .core import NotALayerError as NotALayerError
from .core import ShapeError as ShapeError
from .core import StructureError as StructureError
from .core import Training as Training
from .core import WrapperLayer as WrapperLayer
from .core import apply as apply
from .core import parameter_count as parameter_count
from .core import setup as setup
from .core import state_count as state_count
from .core import stateless_apply as stateless_apply
from .core import testmode as testmode
from .core import trainmode as trainmode
from .core import update_state as update_state
from .layers import AdaptiveMaxPool as AdaptiveMaxPool
from .layers import AdaptiveMeanPool as AdaptiveMeanPool
from .layers import BatchNorm as BatchNorm
from .layers import BranchLayer as BranchLayer
from .layers import Chain as Chain
from .layers import Conv as Conv
from .layers import ConvTranspose as ConvTranspose
from .layers import Dense as Dense
from .layers import Dropout as Dropout
from .layers import Embedding as Embedding
from .layers import FlattenLayer as FlattenLayer
from .layers import GlobalMaxPool as GlobalMaxPool
from .layers import GlobalMeanPool as GlobalMeanPool
from .layers import GroupNorm as GroupNorm
from .layers import GRUCell as GRUCell
from .layers import LayerNorm as LayerNorm
from .layers import LSTMCell as LSTMCell
from .layers import MaxPool as MaxPool
from .layers import MeanPool as MeanPool
from .layers import MultiHeadAttention as MultiHeadAttention
from .layers import NoOpLayer as NoOpLayer
from .layers import PairwiseFusion as PairwiseFusion
from .layers import Parallel as Parallel
from .layers import Recurrence as Recurrence
from .layers import Remat as Remat
from .layers import RepeatedLayer as RepeatedLayer
from .layers import ReshapeLayer as ReshapeLayer
from .layers import SkipConnection as SkipConnection
from .layers import Stacked as Stacked
from .layers import WrappedFunction as WrappedFunction

__version__ = "0.1.0"
