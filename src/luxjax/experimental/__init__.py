"""Model surgery and debugging, after Lux's `Lux.Experimental` (no stability promise yet)."""

from ._layer_map import layer_map as layer_map
from ._share import share_parameters as share_parameters
from ._share import tie as tie
from ._share import tied_groups as tied_groups
