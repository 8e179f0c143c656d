"""Model surgery and debugging, after Lux's `Lux.Experimental` (no stability promise yet)."""

from ..core import NaNError as NaNError
from ..core import share_parameters as share_parameters
from ..core import tie as tie
from ..core import tied_groups as tied_groups
from ._debug import DebugLayer as DebugLayer
from ._debug import ErrorCheck as ErrorCheck
from ._debug import InfCheck as InfCheck
from ._debug import NaNCheck as NaNCheck
from ._debug import debug_mode as debug_mode
from ._debug import raise_nan_errors as raise_nan_errors
from ._freeze import FrozenLayer as FrozenLayer
from ._freeze import freeze as freeze
from ._freeze import unfreeze as unfreeze
from ._layer_map import layer_at as layer_at
from ._layer_map import layer_map as layer_map
from ._lora import LoRA as LoRA
from ._lora import lora as lora
from ._lora import merge_lora as merge_lora
from ._lora import unlora as unlora
