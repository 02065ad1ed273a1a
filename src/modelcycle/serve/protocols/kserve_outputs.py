"""The outputs of a KServe v2 infer reply: which ones, each as JSON ``data`` or binary data, and
the classification extension (the top k classes of an output as ``"value:index:label"`` strings,
as Triton writes them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException
from fastapi.responses import Response

from modelcycle.serve import schemas
from modelcycle.serve.predict import softmax
from modelcycle.serve.protocols.kserve_wire import check_parameters, flag, pack_bytes
from modelcycle.serve.protocols.kserve_wire import reply as wire_reply

ALL = ("probabilities", "logits", "label")
OUTPUT_PARAMETERS = {"binary_data": None, "classification": None}


@dataclass(frozen=True)
class Wanted:
    name: str
    binary: bool
    top: int  # the classification extension's k; 0: the tensor itself


def requested(outputs: list[schemas.RequestedOutput] | None, binary_default: bool, classes: int) -> list[Wanted]:
    """The outputs to send, checked before the model runs. None: all of them, each binary when the
    request's ``binary_data_output`` says so (what tritonclient asks when given no outputs)."""
    if not outputs:
        return [Wanted(name, binary_default, 0) for name in ALL]
    wanted = []
    for output in outputs:
        where = f"output {output.name!r}"
        if any(w.name == output.name for w in wanted):
            raise HTTPException(400, f"{where} is requested twice; ask for each output once")
        parameters = output.parameters or {}
        check_parameters(parameters, OUTPUT_PARAMETERS, where)
        binary = flag(parameters, "binary_data", where, binary_default)
        top = parameters.get("classification", 0)
        if not isinstance(top, int) or isinstance(top, bool) or top < 0:
            raise HTTPException(400, f"{where}: parameter 'classification' must be a number of classes, not {top!r}")
        if top and output.name == "label":
            raise HTTPException(400, f"{where}: classification ranks 'probabilities' or 'logits', not labels")
        wanted.append(Wanted(output.name, binary, min(top, classes)))
    return wanted


def reply(served, request_id: str | None, logits: np.ndarray, wanted: list[Wanted]) -> Response:
    header: dict = {"model_name": served.name, "model_version": served.version}
    if request_id is not None:
        header["id"] = request_id
    header["outputs"] = []
    binary = []
    for want in wanted:
        array = _values(want, served.classes, logits)
        datatype = "FP32" if array.dtype == np.float32 else "BYTES"
        entry = {"name": want.name, "datatype": datatype, "shape": list(array.shape)}
        if want.binary:
            raw = array.astype("<f4").tobytes() if datatype == "FP32" else pack_bytes(_utf8(array))
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        header["outputs"].append(entry)
    return wire_reply(header, binary)


def _values(want: Wanted, classes: list[str], logits: np.ndarray) -> np.ndarray:
    if want.name == "label":
        return np.asarray([classes[i] for i in logits.argmax(1)], dtype=object)
    values = softmax(logits) if want.name == "probabilities" else logits
    values = values.astype(np.float32)
    if not want.top:
        return values
    order = np.argsort(-values, axis=1, kind="stable")[:, : want.top]
    ranked = [[f"{row[i]:f}:{i}:{classes[i]}" for i in top] for row, top in zip(values, order, strict=True)]
    return np.asarray(ranked, dtype=object)


def _utf8(array: np.ndarray) -> list[bytes]:
    return [str(item).encode() for item in array.ravel()]
