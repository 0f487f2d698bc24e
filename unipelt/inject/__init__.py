"""How UniPELT reaches inside a frozen Transformers model without changing it.

- :mod:`~unipelt.inject.architectures`: the data table of where each model type keeps its layers,
  attention and projections;
- :mod:`~unipelt.inject.context`: per-call state (routing rows to tasks, padding, gates), per thread;
- :mod:`~unipelt.inject.hooks`: the forward hooks that call each task's sub-modules;
- :mod:`~unipelt.inject.attention` and :mod:`~unipelt.inject.seams`: how prefix keys/values enter attention.
"""
