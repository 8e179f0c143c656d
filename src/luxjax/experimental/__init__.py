"""Model surgery and debugging, after Lux's `Lux.Experimental` (no stability promise yet)."""

from ..core import NaNError as NaNError
from ._debug import DebugLayer as DebugLayer
from ._debug import debug_mode as debug_mode
from ._debug import raise_nan_errors as raise_nan_errors
from ._layer_map import layer_map as layer_map
