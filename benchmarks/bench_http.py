"""(c) + (d): the service over HTTP (a real uvicorn server, default settings) against the same
pipeline in-process: one request at a time, then throughput with 1, 4, 8 and 16 concurrent
clients against sequential in-process calls, and 8 clients on a server that batches
(ADAIN_MAX_BATCH_SIZE=8). The style is the same in every request, so it is cached.

    nice -n -5 python3 -m benchmarks.bench_http [--size 256] [--repeats 5] [--images 16]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import httpx

from benchmarks.common import (
    InProcessService,
    interleaved,
    machine,
    network_weights,
    photo,
    report,
)
from devkit.server import running_server

CLIENTS = (1, 4, 8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the latency test")
    parser.add_argument("--images", type=int, default=16, help="images per throughput round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the throughput test")
    args = parser.parse_args()
    print(machine())
    encoder, decoder = network_weights()
    size = args.size
    style = photo(size, seed=2)
    contents = [photo(size, seed=100 + i) for i in range(args.images)]
    in_process = InProcessService.start(encoder, decoder)
    env = {"ADAIN_ENCODER_PATH": str(encoder), "ADAIN_DECODER_PATH": str(decoder),
           "ADAIN_DEVICE": "cpu", "ADAIN_STYLES_DIR": "/tmp/adain-bench-styles"}
    form = {"content_size": str(size), "style_size": str(size)}
    try:
        # The default server (on CPU: no batches), and one batching up to 8 requests per pass.
        with running_server(env) as server, \
                running_server({**env, "ADAIN_MAX_BATCH_SIZE": "8"}) as batching, \
                httpx.Client(timeout=600) as client:

            def over_http(content: bytes, http: httpx.Client = client, url: str = server.url
                          ) -> bytes:
                response = http.post(f"{url}/stylize", data=form, files=[
                    ("content", ("c.jpg", content)), ("style", ("s.jpg", style))])
                response.raise_for_status()
                return response.content

            def one_in_process(content: bytes) -> bytes:
                return in_process(content, style, size)

            assert over_http(contents[0]) == one_in_process(contents[0]), "outputs differ"
            print("HTTP and in-process outputs: identical bytes")
            times = interleaved({
                "in-process": lambda: one_in_process(contents[0]),
                "HTTP end-to-end": lambda: over_http(contents[0]),
            }, args.repeats)
            report(f"one request at a time, {size} x {size}, style cached", times, "in-process")

            def sequential_in_process() -> None:
                for content in contents:
                    one_in_process(content)

            def concurrent_http(clients: int, url: str = server.url) -> None:
                def one_client(content: bytes) -> bytes:
                    # One connection per client, as separate clients would have.
                    with httpx.Client(timeout=600) as own:
                        return over_http(content, own, url)

                with ThreadPoolExecutor(clients) as pool:
                    outputs = list(pool.map(one_client, contents))
                assert len(outputs) == len(contents)

            over_http(contents[0], client, batching.url)  # caches the style there too
            variants = {"sequential in-process": sequential_in_process}
            for clients in CLIENTS:
                variants[f"HTTP, {clients} concurrent clients"] = (
                    lambda clients=clients: concurrent_http(clients))
            variants["HTTP, 8 clients, ADAIN_MAX_BATCH_SIZE=8"] = (
                lambda: concurrent_http(8, batching.url))
            times = interleaved(variants, args.rounds, warmup=0)
            # Throughput is images per second: the ratio of rates is the inverse of times.
            print(f"\nthroughput, {args.images} images of {size} x {size} per round, style cached")
            base = min(times["sequential in-process"])
            for name, values in times.items():
                rate = args.images / min(values)
                print(f"  {name:<40} {rate:6.2f} images/s  ratio {base / min(values):.2f}x "
                      "sequential in-process")
    finally:
        in_process.close()


if __name__ == "__main__":
    main()
