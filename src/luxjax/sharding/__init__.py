"""Sharding: where each parameter lives on a device mesh, from one device to many hosts.

`shardings(model, mesh, rules)` turns rules (parameter path patterns or layer types mapped to
`PartitionSpec`s) into one `NamedSharding` per leaf of `ps` and `st`; `lx.setup(key, model,
mesh=mesh, rules=rules)` creates every parameter already sharded that way, and the training
steps keep those shardings. Ready-made rule sets: `data_parallel()`, `fsdp()`,
`tensor_parallel()`; `shard_batch` splits a batch over the data axis. See docs/scaling.md.
"""

from ..core import Parameter as Parameter
from ..core import Rules as Rules
from ..core import shardings as shardings
from ._batch import addressable_bytes as addressable_bytes
from ._batch import shard_batch as shard_batch
from ._rules import data_parallel as data_parallel
from ._rules import fsdp as fsdp
from ._rules import tensor_parallel as tensor_parallel
