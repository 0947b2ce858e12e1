"""rnnfast's pytest-benchmark suite (see README.md here). A package only so that pytest
imports ``bench/conftest.py`` as ``bench.conftest`` and not as a top-level ``conftest``
module, which would shadow ``tests/conftest.py`` (imported by the tests as ``conftest``)."""
