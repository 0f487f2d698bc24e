"""Cost-measurement protocol shared by `unipelt bench`, benchmarks/cost.py and the peer scripts.

These modules import only torch and the standard library (plus :mod:`unipelt.pretrained`, itself stdlib-only),
so the peer scripts can use them from the AdapterHub virtual environment, which pins an older transformers:
they put the repository root on ``sys.path`` and import ``unipelt.benchmarking.cost_protocol``.
"""
