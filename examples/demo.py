"""The main example: runs the three luxjax demos in one process and summarises them.

1. `transfer_learning.py`: pretrain a CNN on digits 0-4, freeze its backbone, fine-tune on 5-9.
2. `nan_hunt.py`: training goes NaN; `debug_mode` names the layer and where it sits.
3. `tied_lm.py`: a character-level language model with tied embeddings on Python's own source.

Each one also runs alone (`python examples/<name>.py --help`). `make demo` runs this file.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
import time
import traceback

from _example_utils import DEFAULT_OUT, rule

PARTS = ("transfer_learning", "nan_hunt", "tied_lm")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0, help="seed passed to every part")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(DEFAULT_OUT), help="folder for plots")
    p.add_argument("--quick", action="store_true", help="tiny settings (seconds, not minutes; checks may fail)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="which parts to run")
    args = p.parse_args(argv)
    start = time.perf_counter()
    common = ["--seed", str(args.seed), "--out", str(args.out)] + (["--no-progress"] if args.no_progress else [])

    lines, problems = [], []
    for name in args.parts:
        print(rule(f"{name}.py"), flush=True)
        try:
            module = importlib.import_module(name)
            result = module.main(common + (module.QUICK if args.quick else []))
        except Exception as error:  # report the part as failed, run the others
            traceback.print_exc()
            lines.append(
                f"{name}: FAILED with {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            )
            problems.append(name)
            continue
        lines.append(f"{module.summary(result)} ({result['seconds']:.0f} s)")
        failed = module.failures(result)
        lines += [f"    FAILED: {problem}" for problem in failed]
        problems += [name] if failed else []

    print(rule("Summary"))
    print("\n".join(lines))
    plots = sorted(str(path) for path in args.out.glob("*.png"))
    print(f"plots: {', '.join(plots) or 'none'}")
    verdict = f"{len(problems)} of {len(args.parts)} parts FAILED" if problems else "all checks passed"
    print(f"{verdict} in {time.perf_counter() - start:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
