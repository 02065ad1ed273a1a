"""benchmarks/gpu_check.py, the GPU check, kept working without a GPU: its dry run (every step on
the CPU, tiny) for a representative subset of the steps (in-process training with bf16 autocast,
torchrun's DDP path, the LM server under 16 clients; the full dry run takes minutes), a step
that overruns its time limit (FAIL, and the next step still runs), and the MFU arithmetic."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def gpu_check(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "240"}
    command = [sys.executable, str(SCRIPT), "--workdir", str(tmp_path), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def rows(output: str) -> dict[str, list[str]]:
    """The table's rows by step name: [status, key figure, seconds, note]."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 5 and cells[1] in ("PASS", "FAIL"):
            found[cells[0]] = cells[1:]
    return found


@pytest.fixture(scope="module")
def module():
    sys.path.insert(0, str(SCRIPT.parent))  # as `python benchmarks/gpu_check.py` has it: `import common`
    try:
        yield importlib.import_module("gpu_check")
    finally:
        sys.path.remove(str(SCRIPT.parent))
        sys.modules.pop("gpu_check", None)


def test_dry_run_of_training_torchrun_and_serving_passes(tmp_path):
    done = gpu_check("--dry-run", "--only", "digits-bf16,ddp,lm-serve-16", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    table = rows(done.stdout)
    assert list(table) == ["data: digits", "digits-bf16", "ddp", "lm-serve-16"], done.stdout
    assert all(status == "PASS" for status, *_ in table.values()), done.stdout
    assert re.match(r"val_acc [\d.]+, [\d.,]+ img/s", table["digits-bf16"][1])
    # the run went through torchrun (events.log names the strategy and the backend)
    assert table["ddp"][1].startswith("1 x gloo on CPU"), table["ddp"]
    assert "torchrun with 1 process" in table["ddp"][3]
    assert re.match(r"16 clients: [\d.,]+ tok/s, TTFT p50 [\d.]+ s, on cpu", table["lm-serve-16"][1])
    assert not list(tmp_path.iterdir()), "the check's folder is removed after a passing run"


def test_a_step_over_its_time_limit_fails_and_the_next_still_runs(tmp_path):
    done = gpu_check("--dry-run", "--only", "digits-fp16,digits-bf16", "--timeout", "1", tmp_path=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    table = rows(done.stdout)
    assert [table[name][0] for name in ("digits-fp16", "digits-bf16")] == ["FAIL", "FAIL"], done.stdout
    assert table["digits-bf16"][3] == "timed out after 1 s"
    assert "FAIL digits-fp16: timed out after 1 s" in done.stdout
    (kept,) = tmp_path.iterdir()  # kept after a failure, with each step's log
    assert sorted(p.name for p in (kept / "logs").iterdir()) == ["digits-bf16.log", "digits-fp16.log"]


def test_an_unknown_step_is_refused_by_name(tmp_path):
    done = gpu_check("--dry-run", "--only", "digits-bf16,resnet50", tmp_path=tmp_path)
    assert done.returncode == 2
    assert "unknown step(s) resnet50" in done.stderr


def test_peaks_are_found_by_device_name(module):
    assert module.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989
    assert module.peak_tflops("NVIDIA H100 PCIe", "fp16") == 756
    assert module.peak_tflops("NVIDIA H200", "fp32") == 67
    assert module.peak_tflops("NVIDIA A100-SXM4-80GB", "bf16") == 312
    assert module.peak_tflops("NVIDIA L40S", "bf16") == 362  # not L4's
    assert module.peak_tflops("NVIDIA L4", "bf16") == 121
    assert module.peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 there
    assert module.peak_tflops("Some Future GPU", "bf16") is None


def test_mfu_is_flops_per_sample_times_rate_over_the_peak(module):
    # 2e9 FLOPs a sample at 100,000 samples/s = 200 TFLOPS: a fifth of an H100's 989 is 20.2 %
    assert module.mfu_text(2e9, 1e5, "NVIDIA H100 80GB HBM3", "bf16") == "200 TFLOPS, MFU 20.2 % of 989 bf16"
    assert module.mfu_text(2e9, 1e5, "CPU", "bf16") == "200 TFLOPS, MFU ?"


def test_training_flops_count_forward_and_backward(module):
    # two linear layers without bias, 4 -> 3 -> 2: forward 2*4*3 + 2*3*2 FLOPs a sample; backward
    # the same again for the weights' gradients, plus the second layer's input gradient (2*3*2;
    # the data needs none)
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
    flops = module.train_flops_per_sample(model, torch.randn(2, 4), lambda m, x: m(x).sum(), "cpu")
    assert flops == 2 * (24 + 12) + 12
