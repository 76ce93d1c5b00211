"""Benchmarks that measure every performance claim of the project (see benchmarks/README.md).

Run them as modules from the repository root: `python -m benchmarks.run_all [--quick]`."""
