"""(a) + (b): per-image time of the service's pipeline in-process (decode, style statistics
from the cache or computed, engine, PNG encode) against the reference port's plain `test.py`
loop, same weights and images, at 256 and 512 px.

    nice -n -5 python3 -m benchmarks.bench_engine [--repeats 5]
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from benchmarks.common import (
    InProcessService,
    ReferenceLoop,
    interleaved,
    machine,
    network_weights,
    photo,
    report,
)

SIZES = (256, 512)


def max_difference(one: bytes, other: bytes) -> int:
    with Image.open(io.BytesIO(one)) as a, Image.open(io.BytesIO(other)) as b:
        return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


def compare(size: int, reference: ReferenceLoop, cached: InProcessService,
            uncached: InProcessService, repeats: int) -> dict[str, float]:
    content, style = photo(size, seed=1), photo(size, seed=2)
    difference = max_difference(reference(content, style, size), cached(content, style, size))
    print(f"\n{size} px: service output vs reference: max difference {difference} / 255")
    times = interleaved({
        "reference test.py loop": lambda: reference(content, style, size),
        "service, style cached": lambda: cached(content, style, size),
        "service, style not cached": lambda: uncached(content, style, size),
    }, repeats)
    return report(f"per image at {size} x {size} (content and style)", times,
                  "reference test.py loop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    print(machine())
    encoder, decoder = network_weights()
    reference = ReferenceLoop(encoder, decoder)
    cached = InProcessService.start(encoder, decoder)
    uncached = InProcessService.start(encoder, decoder, cache_entries=0)
    try:
        for size in args.sizes:
            compare(size, reference, cached, uncached, args.repeats)
    finally:
        cached.close()
        uncached.close()


if __name__ == "__main__":
    main()
