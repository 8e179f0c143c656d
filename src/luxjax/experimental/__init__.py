"""Model surgery and debugging, after Lux's `Lux.Experimental` (no stability promise yet)."""

from ._layer_map import layer_at as layer_at
from ._layer_map import layer_map as layer_map
