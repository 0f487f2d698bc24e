"""unipelt's benchmarks: accuracy against the paper and the peers, cost, serving, AutoPELT, LLMs.

Run each from the repository root as a module, e.g. ``python -m benchmarks.cost --help``. Results are written
under ``benchmarks/out/`` (not versioned); the measured tables live in ``benchmarks/RESULTS.md``.
"""
