"""`python -m bench`: luxjax against hand-written JAX, Flax NNX and Equinox, in one process.

    python -m bench              # the default run (under 10 minutes on a 2-core CPU)
    python -m bench --quick      # under a minute
    python -m bench --only tiny,debug --out bench_out/some.json

glibc's malloc adapts its mmap and trim thresholds to what the process did before, so in one
process the cells measured earlier change the allocation cost of later ones (seen as NNX's
transformer reading 1.1-1.4x instead of 0.85x). The benchmark therefore pins
`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` and `MALLOC_TOP_PAD_`: if they are not set,
it re-executes itself with them set before JAX is imported.
"""

import os
import sys

MALLOC_ENV = {
    # Fixed values switch off glibc's dynamic thresholds: buffers up to 16 MiB (every buffer
    # of these workloads) come from the heap, and freed heap memory is kept rather than
    # trimmed and faulted in again on the next step.
    "MALLOC_MMAP_THRESHOLD_": str(16 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(64 << 20),
}


def _reexec_with_malloc_settings(argv: list[str]) -> None:
    if "--no-reexec" in argv or all(os.environ.get(k) == v for k, v in MALLOC_ENV.items()):
        return
    env = {**os.environ, **MALLOC_ENV}
    os.execve(sys.executable, [sys.executable, "-m", "bench", *argv], env)


if __name__ == "__main__":
    _reexec_with_malloc_settings(sys.argv[1:])
    from ._cli import main

    sys.exit(main(sys.argv[1:]))
