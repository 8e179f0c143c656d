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
from .core import Precision as Precision
from .core import ShapeError as ShapeError
from .core import StatefulLuxLayer as StatefulLuxLayer
from .core import StructureError as StructureError
from .core import Training as Training
from .core import WrapperLayer as WrapperLayer
from .core import apply as apply
from .core import outputsize as outputsize
from .core import parameter_count as parameter_count
from .core import setup as setup
from .core import state_count as state_count
from .core import stateless_apply as stateless_apply
from .core import testmode as testmode
from .core import trainmode as trainmode
from .core import update_state as update_state
from .layers import AdaptiveLPPool as AdaptiveLPPool
from .layers import AdaptiveMaxPool as AdaptiveMaxPool
from .layers import AdaptiveMeanPool as AdaptiveMeanPool
from .layers import AlphaDropout as AlphaDropout
from .layers import BatchNorm as BatchNorm
from .layers import BidirectionalRNN as BidirectionalRNN
from .layers import Bilinear as Bilinear
from .layers import BranchLayer as BranchLayer
from .layers import Chain as Chain
from .layers import Conv as Conv
from .layers import ConvTranspose as ConvTranspose
from .layers import Dense as Dense
from .layers import Dropout as Dropout
from .layers import Embedding as Embedding
from .layers import FlattenLayer as FlattenLayer
from .layers import GlobalLPPool as GlobalLPPool
from .layers import GlobalMaxPool as GlobalMaxPool
from .layers import GlobalMeanPool as GlobalMeanPool
from .layers import GroupNorm as GroupNorm
from .layers import GRUCell as GRUCell
from .layers import InstanceNorm as InstanceNorm
from .layers import LayerNorm as LayerNorm
from .layers import LPPool as LPPool
from .layers import LSTMCell as LSTMCell
from .layers import Maxout as Maxout
from .layers import MaxPool as MaxPool
from .layers import MeanPool as MeanPool
from .layers import MixedPrecision as MixedPrecision
from .layers import MultiHeadAttention as MultiHeadAttention
from .layers import NoOpLayer as NoOpLayer
from .layers import PairwiseFusion as PairwiseFusion
from .layers import Parallel as Parallel
from .layers import PixelShuffle as PixelShuffle
from .layers import Recurrence as Recurrence
from .layers import Remat as Remat
from .layers import RepeatedLayer as RepeatedLayer
from .layers import ReshapeLayer as ReshapeLayer
from .layers import ReverseSequence as ReverseSequence
from .layers import RMSNorm as RMSNorm
from .layers import RNNCell as RNNCell
from .layers import RotaryPositionalEmbedding as RotaryPositionalEmbedding
from .layers import Scale as Scale
from .layers import SelectDim as SelectDim
from .layers import SinusoidalPositionalEmbedding as SinusoidalPositionalEmbedding
from .layers import SkipConnection as SkipConnection
from .layers import Stacked as Stacked
from .layers import StatefulRecurrentCell as StatefulRecurrentCell
from .layers import Upsample as Upsample
from .layers import VariationalHiddenDropout as VariationalHiddenDropout
from .layers import WeightNorm as WeightNorm
from .layers import WrappedFunction as WrappedFunction
from .layers import mixed_precision as mixed_precision

__version__ = "0.1.0"
