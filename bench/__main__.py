"""Run every benchmark in bench/ one after another: `make bench` or `python -m bench`.

Each module is also runnable alone (`python -m bench.NAME`) and prints its figures with their
ratio to the baseline measured in the same run.
"""

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main() -> int:
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]))
    wanted = sys.argv[1:] or [n for n in names if not n.startswith("_")]
    failed = []
    for name in wanted:
        print(f"\n=== bench.{name}", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception as exc:  # one broken bench must not hide the others' figures
            failed.append(name)
            print(f"bench.{name} failed: {exc!r}", flush=True)
        print(f"--- bench.{name}: {time.perf_counter() - started:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
