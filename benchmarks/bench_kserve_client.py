"""KServe v2 through Triton's own client: what the binary tensor data extension buys over JSON.

The script trains a small CNN on 64 px photo-like pictures (one epoch: the weights do not matter
here), starts `modelcycle serve` on 127.0.0.1 and, in this one process, sends the same batch of
16 images with ``tritonclient.http`` four ways, one request at a time on one keep-alive
connection, interleaved round by round so that a slow spell hits all alike:

- pixels, JSON: the FP32 ``input`` tensor (16, 3, 64, 64) as JSON numbers, outputs as JSON (the baseline);
- pixels, binary: the same tensor as binary data (``binary_data=True``), outputs binary;
- files, JSON: the 16 PNG files as base64 strings in a BYTES ``image_bytes`` tensor;
- files, binary: the PNG files' own bytes as a binary BYTES tensor.

Requests/s counts the whole round trip: the client's encoding, the server's parsing (and
decoding and preprocessing, for files), the model, and the client reading the reply.

Target: binary pixels at >= 2x the requests/s of JSON pixels.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path

import numpy as np

import common
from modelcycle import load_config, prepare, train
from modelcycle.evaluation.inference import preprocess
from modelcycle.runs import read_manifest
from modelcycle.serve.process import ServerProcess

TARGET = 2.0
BATCH = 16
SIZE = 64


def build_model(root: Path) -> Path:
    common.write_image_folder(root / "images", 96, SIZE, 3, suffix=".png")
    prepare(root / "images", root / "data", val=0.25, seed=0)
    overrides = {
        "data.root": root / "data",
        "data.image_size": SIZE,
        "data.workers": 0,
        "model.name": "simple_cnn",
        "model.args": "{width: 16}",
        "train.epochs": 1,
        "train.batch_size": 16,
        "run.dir": root / "runs",
        "run.name": "cnn64",
    }
    return train(load_config(None, [f"{k}={v}" for k, v in overrides.items()]), progress=False).path


def requests(triton, pixels: np.ndarray, files: list[bytes]) -> dict:
    """Each way's (inputs, outputs) for ``client.infer``, built once: the same objects every request."""

    def pixel_input(binary: bool):
        return [triton.InferInput("input", list(pixels.shape), "FP32").set_data_from_numpy(pixels, binary_data=binary)]

    def file_input(items: list[bytes], binary: bool):
        tensor = triton.InferInput("image_bytes", [len(items)], "BYTES")
        return [tensor.set_data_from_numpy(np.asarray(items, dtype=object), binary_data=binary)]

    def outputs(binary: bool):
        return [triton.InferRequestedOutput(name, binary_data=binary) for name in ("probabilities", "label")]

    encoded = [base64.b64encode(f) for f in files]
    return {
        "pixels, JSON (baseline)": (pixel_input(False), outputs(False)),
        "pixels, binary": (pixel_input(True), outputs(True)),
        "files, JSON base64": (file_input(encoded, False), outputs(False)),
        "files, binary": (file_input(files, True), outputs(True)),
    }


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run: fewer rounds")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per way")
    parser.add_argument("--requests", type=int, default=20, help="requests per way per round")
    args = parser.parse_args()
    for name, value in (("rounds", 2), ("requests", 5)):
        common.quick_default(args, name, value)
    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads), style="dim")
    import tritonclient.http as triton

    with common.temp_dir("kserve", args.workdir, args.keep) as root:
        run = build_model(root)
        paths = sorted((root / "images").glob("*/*.png"))[:BATCH]
        pixels = preprocess(read_manifest(run), [(p, 0) for p in paths]).numpy()
        files = [p.read_bytes() for p in paths]
        ways = requests(triton, pixels, files)
        with ServerProcess([run], f"serve.max_images={BATCH}") as server:
            client = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
            answers = {name: infer(client, way).as_numpy("probabilities") for name, way in ways.items()}

            def rate(way) -> float:
                start = time.perf_counter()
                for _ in range(args.requests):
                    infer(client, way)
                return args.requests / (time.perf_counter() - start)

            rates = common.alternate({name: (lambda w=way: rate(w)) for name, way in ways.items()}, args.rounds)
            client.close()

    baseline = common.median(rates["pixels, JSON (baseline)"])
    sizes = {name: len(request_body(triton, *way)) for name, way in ways.items()}
    rows = []
    for name, values in rates.items():
        rows.append(
            [name, common.median(values), common.spread(values), BATCH * common.median(values),
             f"{sizes[name] / 1e6:.2f}", f"{common.median(values) / baseline:.2f}x"]
        )  # fmt: skip
    common.print_table(
        f"tritonclient.http against `modelcycle serve`: a batch of {BATCH} images of {SIZE} px per request",
        ["", "requests/s (median)", "min..max", "images/s", "request MB", "vs JSON pixels"],
        rows,
        note=f"{args.rounds} interleaved rounds of {args.requests} sequential requests per way, one keep-alive "
        "connection; client and server share the machine's cores. All four ways gave the same probabilities "
        f"(max difference {max(np.abs(a - answers['pixels, binary']).max() for a in answers.values()):.1e}).",
    )
    common.verdict(
        common.median(rates["pixels, binary"]) >= TARGET * baseline,
        f"binary pixels at {common.median(rates['pixels, binary']) / baseline:.2f}x JSON pixels' requests/s "
        f"(target >= {TARGET}x)",
    )


def infer(client, way):
    inputs, outputs = way
    return client.infer("cnn64", inputs, outputs=outputs)


def request_body(triton, inputs, outputs) -> bytes:
    """The body tritonclient sends for this way (its own request builder)."""
    from tritonclient.http._utils import _get_inference_request

    body, _ = _get_inference_request(inputs, "", outputs, 0, False, False, 0, None, None)
    return body


if __name__ == "__main__":
    main()
