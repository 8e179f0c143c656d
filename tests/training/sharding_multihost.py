"""One process of a multi-host FSDP run, or the one-process reference: `python sharding_multihost.py PORT N ID OUT`.

With `N` processes on localhost (JAX's CPU collectives, gloo) of `4 // N` CPU devices each, it
trains the shared test model with FSDP rules over a 4-device mesh, each process feeding its
own rows of the batch; process 0 writes the parameters, gathered, to the `.npz` file `OUT`.
`N = 1` runs without `jax.distributed`, on 4 devices of one process: the reference.
"""

import os
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

PORT, PROCESSES, PROCESS_ID, OUT = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
jax.config.update("jax_num_cpu_devices", 4 // PROCESSES)
if PROCESSES > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{PORT}", num_processes=PROCESSES, process_id=PROCESS_ID)

sys.path.insert(0, os.path.dirname(__file__))
import sharding_model as m  # noqa: E402

import luxjax as lx  # noqa: E402
from luxjax.core import leaves_with_paths  # noqa: E402
from luxjax.sharding import fsdp, shard_batch  # noqa: E402

assert jax.device_count() == 4 and jax.process_count() == PROCESSES, jax.devices()
mesh = Mesh(np.array(jax.devices()), ("data",))
model = m.make_model()
ps, st = lx.setup(jax.random.key(0), model, mesh=mesh, rules=fsdp(min_size=64))
x, y = m.batch()
rows = m.BATCH // PROCESSES
mine = slice(PROCESS_ID * rows, (PROCESS_ID + 1) * rows)
data = shard_batch((np.asarray(x)[mine], np.asarray(y)[mine]), mesh)
ts, _ = m.train(model, ps, st, data)
assert ts.parameters["embed"]["weight"] is ts.parameters["head"]["weight"]
assert len(ts.parameters["embed"]["weight"].sharding.device_set) == 4
gathered = multihost_utils.process_allgather({"ps": ts.parameters, "st": ts.states}, tiled=True)
if PROCESS_ID == 0:
    np.savez(OUT, **{str(path): np.asarray(leaf) for path, leaf in leaves_with_paths(gathered)})
print("ok", PROCESS_ID)
