"""A batch image job against the same images sent one by one to /stylize, on one real server
(default settings, one-machine mode): wall time from the first byte sent to the last image
received, and the largest pixel difference between a batch item and /stylize's answer.

    nice -n -5 python3 -m benchmarks.bench_batch_jobs [--size 256] [--images 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
import zipfile

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import interleaved, machine, network_weights, photo, report
from devkit.server import running_server


def max_difference(one: bytes, other: bytes) -> int:
    with Image.open(io.BytesIO(one)) as a, Image.open(io.BytesIO(other)) as b:
        return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    encoder, decoder = network_weights()
    style = photo(args.size, seed=2)
    contents = [photo(args.size, seed=300 + i) for i in range(args.images)]
    form = {"content_size": str(args.size), "style_size": str(args.size)}
    with (
        tempfile.TemporaryDirectory(prefix="adain-bench-batch-") as folder,
        running_server(
            {
                "ADAIN_ENCODER_PATH": str(encoder),
                "ADAIN_DECODER_PATH": str(decoder),
                "ADAIN_DEVICE": "cpu",
                "ADAIN_STYLES_DIR": f"{folder}/styles",
                "ADAIN_JOBS_DIR": f"{folder}/jobs",
            }
        ) as server,
        httpx.Client(timeout=600) as client,
    ):

        def one_by_one() -> list[bytes]:
            outputs = []
            for content in contents:
                response = client.post(
                    f"{server.url}/stylize",
                    data=form,
                    files=[("content", ("c.jpg", content)), ("style", ("s.jpg", style))],
                )
                response.raise_for_status()
                outputs.append(response.content)
            return outputs

        def batch_job() -> list[bytes]:
            files = [("content", (f"{i}.jpg", c)) for i, c in enumerate(contents)]
            response = client.post(
                f"{server.url}/jobs", data=form, files=[*files, ("style", ("s.jpg", style))]
            )
            response.raise_for_status()
            job_id = response.json()["id"]
            while client.get(f"{server.url}/jobs/{job_id}").json()["status"] != "succeeded":
                time.sleep(0.02)
            result = client.get(f"{server.url}/jobs/{job_id}/result")
            with zipfile.ZipFile(io.BytesIO(result.content)) as archive:
                names = [n for n in archive.namelist() if n != "manifest.json"]
                return [archive.read(name) for name in names]

        difference = max(map(max_difference, batch_job(), one_by_one()))
        print(f"\nbatch items vs /stylize: max difference {difference} / 255")
        times = interleaved(
            {"/stylize, one by one": one_by_one, "one batch job": batch_job}, args.repeats
        )
        report(
            f"{args.images} images of {args.size} x {args.size}, one style (cached)",
            times,
            "/stylize, one by one",
        )


if __name__ == "__main__":
    main()
