"""The built-in layers."""

from ._attention import MultiHeadAttention as MultiHeadAttention
from ._basic import FlattenLayer as FlattenLayer
from ._basic import NoOpLayer as NoOpLayer
from ._basic import ReshapeLayer as ReshapeLayer
from ._basic import WrappedFunction as WrappedFunction
from ._containers import BranchLayer as BranchLayer
from ._containers import Chain as Chain
from ._containers import PairwiseFusion as PairwiseFusion
from ._containers import Parallel as Parallel
from ._containers import SkipConnection as SkipConnection
from ._dense import Dense as Dense
from ._embedding import Embedding as Embedding
from ._recurrent import GRUCell as GRUCell
from ._recurrent import LSTMCell as LSTMCell
from ._recurrent import Recurrence as Recurrence
