"""The HTTP service (`service.main:create_app`, `adain serve`)."""

import os

# libgomp's threads spin while they wait, and torch's parallel regions stall whenever one of
# them is descheduled, which on cores shared with request threads (decoding, encoding) or other
# processes makes every image much slower (figures: docs/benchmarks.md). Passive waiting costs
# little per layer. libgomp reads this when torch loads, and every entry point imports this package
# before torch; an OMP_WAIT_POLICY in the environment still wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
