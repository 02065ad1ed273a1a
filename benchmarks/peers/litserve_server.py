"""The LitServe side of the image-serving row: a LitAPI over the ONNX export of a modelcycle run,
written as LitServe's docs write one (Pillow decode, numpy preprocessing, an ONNX Runtime session).

    python benchmarks/peers/litserve_server.py RUN PORT

The session keeps ONNX Runtime's default thread count, as `modelcycle serve` does.

LitServe pickles the API into its worker process, so the class lives at module level.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import litserve as ls
import numpy as np
from PIL import Image


class OnnxClassifier(ls.LitAPI):
    def __init__(self, run: Path, **kwargs):
        super().__init__(**kwargs)
        self.run = run
        manifest = json.loads((run / "model" / "modelcycle.json").read_text())
        self.pre, self.classes = manifest["preprocessing"], manifest["classes"]
        self.mean = np.asarray(self.pre["mean"], np.float32)[:, None, None]
        self.std = np.asarray(self.pre["std"], np.float32)[:, None, None]
        self.mode = "L" if self.pre["channels"] == 1 else "RGB"

    def setup(self, device) -> None:
        import onnxruntime as ort

        onnx = next((self.run / "model").glob("*.onnx"))
        self.session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def decode_request(self, request):
        image = Image.open(io.BytesIO(base64.b64decode(request["images"][0]))).convert(self.mode)
        size = self.pre["image_size"]
        image = image.resize((size, size), Image.BILINEAR)
        pixels = np.asarray(image, np.float32).reshape(size, size, -1).transpose(2, 0, 1)
        return (pixels / 255.0 - self.mean) / self.std

    def batch(self, inputs):
        return np.stack(inputs).astype(np.float32)

    def predict(self, x):
        return self.session.run(None, {self.input: x})[0]

    def unbatch(self, output):
        return list(output)

    def encode_response(self, logits):
        index = int(np.argmax(logits))
        return {"predictions": [{"label": self.classes[index], "index": index}]}


if __name__ == "__main__":
    run, port = Path(sys.argv[1]), int(sys.argv[2])
    api = OnnxClassifier(run, max_batch_size=32, batch_timeout=0.005, api_path="/v1/predict")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)
