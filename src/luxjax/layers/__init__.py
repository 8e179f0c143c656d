"""The built-in layers."""

from ._basic import FlattenLayer as FlattenLayer
from ._basic import NoOpLayer as NoOpLayer
from ._basic import ReshapeLayer as ReshapeLayer
from ._basic import WrappedFunction as WrappedFunction
from ._containers import BranchLayer as BranchLayer
from ._containers import Chain as Chain
from ._containers import PairwiseFusion as PairwiseFusion
from ._containers import Parallel as Parallel
from ._containers import SkipConnection as SkipConnection
from ._conv import Conv as Conv
from ._conv import ConvTranspose as ConvTranspose
from ._dense import Dense as Dense
from ._dropout import Dropout as Dropout
from ._norm import BatchNorm as BatchNorm
from ._norm import GroupNorm as GroupNorm
from ._norm import LayerNorm as LayerNorm
from ._pool import AdaptiveMaxPool as AdaptiveMaxPool
from ._pool import AdaptiveMeanPool as AdaptiveMeanPool
from ._pool import GlobalMaxPool as GlobalMaxPool
from ._pool import GlobalMeanPool as GlobalMeanPool
from ._pool import MaxPool as MaxPool
from ._pool import MeanPool as MeanPool
