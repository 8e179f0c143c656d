"""The layer contract; imports nothing from luxjax's other packages."""

from ._display import display as display
from ._display import function_name as function_name
from ._errors import CheckpointError as CheckpointError
from ._errors import ConfigError as ConfigError
from ._errors import LayerError as LayerError
from ._errors import NaNError as NaNError
from ._errors import NotALayerError as NotALayerError
from ._errors import ShapeError as ShapeError
from ._errors import StructureError as StructureError
from ._keypath import KeyPath as KeyPath
from ._layer import ContainerLayer as ContainerLayer
from ._layer import Layer as Layer
from ._layer import WrapperLayer as WrapperLayer
from ._layer import call_child as call_child
from ._layer import call_located as call_located
from ._layer import check_layer_argument as check_layer_argument
from ._setup import apply as apply
from ._setup import parameter_count as parameter_count
from ._setup import setup as setup
from ._setup import state_count as state_count
from ._setup import stateless_apply as stateless_apply
from ._state import Training as Training
from ._state import testmode as testmode
from ._state import trainmode as trainmode
from ._state import update_state as update_state
