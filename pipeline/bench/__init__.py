"""Benchmarks behind `make bench`: each module exposes `run(out_dir: Path) -> dict` and writes `out_dir/<name>.json`."""
