"""The project's benchmark: hand-written vs native autograd, the training step, start-up, sweeps.

    python scripts/bench.py                      # full run (~5–8 min on 2 CPU cores), writes bench-results.json
    python scripts/bench.py --quick              # CI smoke run (~30 s): fewer rounds, smaller cases, no sweep
    python scripts/bench.py --json out.json      # where the JSON goes (keys: docs/performance.md)
    python scripts/bench.py --only functions,training   # some sections only
    python scripts/bench.py --only training,threads     # monitoring overhead, at torch's default threads and at one

Contenders run side by side in one process, interleaved, medians of several rounds: run it on an
otherwise idle machine, since the ratios are what it is for.
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

# The benchmark lives in the checkout (benchmarks/), not in the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    from benchmarks import report as bench
except ModuleNotFoundError as missing:  # the package itself is not installed
    sys.exit(f"error: {missing}. Install the package first: pip install -e . (see README.md, Quick start)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: fewer rounds, smaller cases, no sweep")
    parser.add_argument(
        "--json", default="bench-results.json", help="where to write the results (default: %(default)s)"
    )
    parser.add_argument("--only", default=",".join(bench.SECTIONS), help="comma-separated sections (default: all)")
    args = parser.parse_args()
    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in sections if s not in bench.SECTIONS]
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(unknown)}; use some of {', '.join(bench.SECTIONS)}")
    warnings.filterwarnings("ignore")
    results = bench.run(quick=args.quick, sections=sections, log=lambda s: print(s, file=sys.stderr, flush=True))
    bench.render(results)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
