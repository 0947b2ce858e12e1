"""rnnfast's benchmark against torch.nn, run as ``python -m bench`` from the repository root
(see README.md here), and its pytest-benchmark suite (``pytest bench``).

Modules: :mod:`bench.grid` (layers, shapes, targets, FLOPs), :mod:`bench.check` (the
torch.nn / rnnfast pair and the correctness check), :mod:`bench.timing` (interleaved timing,
one cell, GEMM peak), :mod:`bench.memory` (training-step peak memory, one subprocess per
measurement), :mod:`bench.machine` (CPU, ISA, load, versions, commit), :mod:`bench.report`
(tables and the results files), :mod:`bench.plot`, :mod:`bench.cli`.

Nothing is imported here: pytest imports this package whenever it walks into ``bench/`` (as
the parent of ``bench.conftest``, which keeps ``bench/conftest.py`` from shadowing
``tests/conftest.py``), and that must stay cheap.
"""
