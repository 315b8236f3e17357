"""What the tests and the benchmarks share, and the installed package does not ship: test
images (`devkit.images`), the reference port's `test.py` as an oracle and a baseline
(`devkit.reference_port`), and real servers to drive (`devkit.server`).

Not in the wheel (pyproject installs `models*` and `service*` only) and never imported by them.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The team's shared images, beside the checkout (read by path, never copied into the repo).
DATASETS = REPO.parent / "shared" / "datasets"
