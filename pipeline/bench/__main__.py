"""`python -m pipeline.bench [NAME ...]`: run the benchmarks (all by default), each writing JSON under outputs/bench/."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

import pipeline.bench as bench_pkg

OUT = Path("outputs/bench")


def main(argv: list[str]) -> int:
    names = argv or sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__) if not m.name.startswith("_"))
    OUT.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in names:
        print(f"== bench {name}", flush=True)
        started = time.perf_counter()
        try:
            result = importlib.import_module(f"pipeline.bench.{name}").run(OUT)
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            failed += 1
            print(f"bench {name} failed: {exc!r}", file=sys.stderr)
            continue
        (OUT / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        print(f"== bench {name}: {time.perf_counter() - started:.1f}s -> {OUT / (name + '.json')}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
