"""Benchmark scripts (not tests): `python3 -m benchmarks.run_all`.

`service` is imported first so that every benchmark process, its plain reference loop
included, runs torch with the service's OpenMP settings (see `service/__init__.py`).
"""

import service  # noqa: F401
