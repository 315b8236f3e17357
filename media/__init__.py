"""Frames and files in, frames and files out: images and videos decoded and checked, the
clip runner. No HTTP and no job store: the command, the service's jobs and routes, live mode
and the worker all call it. Imports `models/`; never `service/` or `cli/`."""

import os

# libgomp's threads spin while they wait, and torch's parallel regions stall whenever one of
# them is descheduled, which on cores shared with request threads (decoding, encoding) or other
# processes makes every image much slower (figures: docs/benchmarks.md). Passive waiting costs
# little per layer. libgomp reads this when torch loads, and every entry point that runs the
# networks (`adain stylize`, the service, a worker) imports this package before torch; an
# OMP_WAIT_POLICY in the environment still wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
