"""Attention past one device: ring attention, DDP and a local launcher.

``distributed`` holds sequence-parallel ring attention, its cost model and
data parallelism; ``launch`` runs a function on a group of local processes
(for the tests and the chapter). Imported on first use:
``ea.distributed``.
"""
