"""GPU check (issue 18, item 4): one run of every GPU-relevant path, one table, in under 8 minutes.

On a CUDA machine each step below runs in a process of its own, with its own time limit, so a
hang or a crash costs that step only; the table says PASS or FAIL for each, with its key figure,
and the exit code is 1 if any step failed.

* ``digits-bf16``, ``digits-fp16``: configs/digits.yaml with ``train.precision`` bf16 / fp16
  (autocast; fp16 with the gradient scaler) on ``train.device=cuda``: validation accuracy (must
  reach 0.9), training images/s, and for fp16 the loss scale the scaler ended at.
* ``resnet18-224``: resnet18 at 224 px, bf16, channels_last, on generated photo-like JPEGs:
  training images/s and MFU.
* ``lm-small``: pretraining the ``small`` Llama preset on the pydocs corpus, bf16: tokens/s
  and MFU.
* ``ddp``, ``fsdp``: digits through torchrun (``train.strategy``), one process per visible GPU
  (with one GPU: one process, which still runs the distributed path: NCCL, the DDP wrapper or
  FSDP's sharding); events.log must show the strategy and the NCCL backend.
* ``lm-serve-16``: ``modelcycle serve`` of a random-weight chat model under 16 concurrent
  streaming clients (benchmarks/bench_lm_serve.py's model and client): tokens/s, time to first
  token, and the device the server put the model on.

Figures: images/s and tokens/s come from the epochs after the first (``epoch_time_s``, which
ends on a host sync, so GPU work is included); MFU is the FLOPs of one training step (forward
and backward, counted by ``torch.utils.flop_counter.FlopCounterMode``) per sample, times samples
per second, over the GPU's dense peak for the step's precision (``PEAK_TFLOPS``; an unknown GPU
shows '?').

``--dry-run`` runs every step on the CPU with tiny sizes (one epoch of 1-2 steps; bf16 on CPU,
fp32 where fp16 needs CUDA), so the script is known to work before a GPU shows up.

    bash benchmarks/gpu_check.sh [--dry-run] [--only STEP,STEP] [--timeout S] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import common

# Dense peak TFLOPS (bf16, fp16, fp32) from NVIDIA's data sheets: half the "with sparsity" tensor
# figure; fp32 is the plain FP32 rate (no TF32). The first pattern found in the device name wins.
PEAK_TFLOPS: list[tuple[str, tuple[float | None, float, float]]] = [
    (r"GH200", (989, 989, 67)),
    (r"H100.*NVL", (835, 835, 60)),
    (r"H100.*PCIe", (756, 756, 51)),
    (r"H100", (989, 989, 67)),  # SXM5 ("NVIDIA H100 80GB HBM3")
    (r"H200.*NVL", (835, 835, 60)),
    (r"H200", (989, 989, 67)),  # SXM
    (r"A100", (312, 312, 19.5)),  # SXM4 and PCIe alike
    (r"L40S", (362, 362, 91.6)),
    (r"\bL40\b", (181, 181, 90.5)),
    (r"\bL4\b", (121, 121, 30.3)),
    (r"\bA10\b", (125, 125, 31.2)),
    (r"RTX 4090", (165, 165, 82.6)),  # fp16/bf16 tensor cores with fp32 accumulation
    (r"V100", (None, 125, 15.7)),  # no bf16 tensor cores
    (r"\bT4\b", (None, 65, 8.1)),
]
PRECISIONS = ("bf16", "fp16", "fp32")
BUDGET_S = 450  # all steps together on a GPU: under 8 minutes with the start-up around them
DRY_TIMEOUT_S = 300  # per step on the CPU: generous, a busy 2-core machine is slow to import torch
ACCURACY_FLOOR = 0.9  # digits after 5 epochs; far below it, mixed precision is broken
RESULT = "result.json"


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The dense peak of ``device_name`` in ``precision`` (bf16, fp16, fp32), None if unknown."""
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peaks[PRECISIONS.index(precision)]
    return None


def mfu_text(flops_per_sample: float, samples_per_s: float, device_name: str, precision: str) -> str:
    """``412 TFLOPS, MFU 41.7 % of 989 bf16``, or ``MFU ?`` for a device without a known peak."""
    peak = peak_tflops(device_name, precision)
    achieved = flops_per_sample * samples_per_s / 1e12
    if peak is None:
        return f"{achieved:.3g} TFLOPS, MFU ?"
    return f"{achieved:.3g} TFLOPS, MFU {100 * achieved / peak:.1f} % of {peak:g} {precision}"


# ---------------------------------------------------------------- inside a step's process


class StepFailed(Exception):
    """The step ran but its result is wrong; the message says how."""


@dataclass
class Setup:
    root: Path  # the check's folder: shared data, runs, logs
    dry: bool

    @property
    def device(self) -> str:
        return "cpu" if self.dry else "cuda"

    def device_name(self) -> str:
        import torch

        return "CPU" if self.dry else torch.cuda.get_device_name()

    def precision(self, wanted: str) -> tuple[str, str]:
        """(the precision to train in, a note when it is not ``wanted``)."""
        import torch

        if self.dry:
            return ("fp32", "fp16 needs CUDA: fp32 on CPU") if wanted == "fp16" else (wanted, "")
        if wanted == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
            return "fp16", f"{self.device_name()} has no bf16: fp16"
        return wanted, ""

    def run_overrides(self, name: str, precision: str, epochs: int, batch: int) -> list[str]:
        return [
            f"run.dir={self.root / 'runs'}",
            f"run.name={name}",
            f"train.device={self.device}",
            f"train.precision={precision}",
            f"train.epochs={epochs}",
            f"train.batch_size={batch}",
        ]

    def image_loader(self) -> list[str]:
        """Image steps: no loader worker processes for 1-2 steps (language models have none)."""
        return ["data.workers=0"] if self.dry else []


def epoch_rate(run_dir: Path, per_epoch: float) -> float:
    """``per_epoch`` (images, tokens) per second over the epochs after the first (warm-up: cuDNN
    autotuning, caches), or the first when there is only one."""
    from modelcycle.runs import Run

    epochs = Run(run_dir).epoch_metrics()
    if not epochs:
        raise StepFailed(f"{run_dir}/metrics.jsonl has no finished epoch")
    times = [m["epoch_time_s"] for m in epochs[1:]] or [epochs[0]["epoch_time_s"]]
    return per_epoch / statistics.median(times)


def last_epoch(run_dir: Path) -> dict:
    from modelcycle.runs import Run

    return Run(run_dir).epoch_metrics()[-1]


def train_flops_per_sample(model, inputs, loss_fn, device: str) -> float:
    """FLOPs of one forward and backward pass over ``inputs`` (a batch of 2), per sample."""
    from torch.utils.flop_counter import FlopCounterMode

    model.to(device).train()
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, inputs).backward()
    return counter.get_total_flops() / 2


def digits_train_count(root: Path) -> int:
    return len((root / "digits" / "data" / "train.txt").read_text().splitlines())


def digits(s: Setup, wanted: str) -> tuple[str, str]:
    import torch

    from modelcycle import load_config, train

    precision, note = s.precision(wanted)
    epochs, batch = (1, 32) if s.dry else (5, 64)
    overrides = [
        f"data.root={s.root / 'digits' / 'data'}",
        *s.run_overrides(f"digits-{wanted}", precision, epochs, batch),
    ]
    run = train(load_config(common.REPO / "configs" / "digits.yaml", overrides), progress=False).path
    accuracy = last_epoch(run)["val_accuracy"]
    figure = f"val_acc {accuracy:.3f}, {common.fmt(epoch_rate(run, digits_train_count(s.root)))} img/s"
    if precision == "fp16":  # the scaler's state in the last checkpoint: finite, and still scaling
        scale = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["scaler"]["scale"]
        figure += f", loss scale {scale:g}"
        if not 1 <= scale < float("inf"):
            raise StepFailed(f"{figure}: the gradient scaler's scale collapsed")
    if not s.dry and accuracy < ACCURACY_FLOOR:
        raise StepFailed(f"{figure}: below {ACCURACY_FLOOR} after {epochs} epochs")
    return figure, note


def resnet18(s: Setup) -> tuple[str, str]:
    import torch
    import torch.nn.functional as F

    from modelcycle import load_config, prepare, train
    from modelcycle.models.registry import build_model

    size, count, classes, batch, epochs = (32, 12, 2, 4, 1) if s.dry else (224, 2304, 10, 128, 3)
    raw, data = s.root / "images" / "raw", s.root / "images" / "data"
    common.write_image_folder(raw, count, size, classes, photo=True)
    prepare(raw, data, val=1 / 3 if s.dry else 1 / 9, seed=0)  # dry: 8 training images, 2 steps
    precision, note = s.precision("bf16")
    overrides = [
        f"data.root={data}",
        f"data.image_size={size}",
        "model.name=resnet18",
        "model.args={}",
        "train.lr=0.001",
        "train.channels_last=true",
        *s.image_loader(),
        *s.run_overrides("resnet18-224", precision, epochs, batch),
    ]
    run = train(load_config(None, overrides), progress=False).path
    rate = epoch_rate(run, len((data / "train.txt").read_text().splitlines()))
    torch.manual_seed(0)
    model = build_model("resnet18", 3, classes, size)
    batch_of_2 = (torch.randn(2, 3, size, size, device=s.device), torch.tensor([0, 1], device=s.device))
    flops = train_flops_per_sample(model, batch_of_2, lambda m, b: F.cross_entropy(m(b[0]), b[1]), s.device)
    return f"{common.fmt(rate)} img/s at {size} px, {mfu_text(flops, rate, s.device_name(), precision)}", note


def lm_pretrain(s: Setup) -> tuple[str, str]:
    import torch

    from modelcycle import load_config, train
    from modelcycle.data.pydocs import write_pydocs
    from modelcycle.lm.model import build_lm
    from modelcycle.lm.tokenizer import train_tokenizer

    folder = s.root / "lm"
    write_pydocs(folder / "pydocs")
    corpus = (folder / "pydocs" / "corpus.txt").read_text()
    vocab, length, batch, epochs = (300, 64, 8, 1) if s.dry else (4000, 256, 64, 3)
    (folder / "tok-source.txt").write_text(corpus[:20_000] if s.dry else corpus)
    tokenizer = train_tokenizer([folder / "tok-source.txt"], vocab, folder / "tok")
    # dry: about 10 sequences of 64 tokens, 2 steps; on a GPU the corpus 8 times, ~40 steps an epoch
    (folder / "train.txt").write_text(corpus[:1500] if s.dry else "\n\n".join([corpus] * 8))
    precision, note = s.precision("bf16")
    overrides = [
        "run.task=lm",
        "model.name=llama",
        "lm.size=small",
        f"lm.tokenizer={folder / 'tok'}",
        f"lm.context_length={length}",
        f"lm.train_files=[{folder / 'train.txt'}]",
        "train.lr=0.001",
        "train.monitor=train_loss",
        "train.log_every=10",
        *s.run_overrides("lm-small", precision, epochs, batch),
    ]
    run = train(load_config(None, overrides), progress=False).path
    rate = epoch_rate(run, last_epoch(run)["train_tokens"])  # predicted tokens: length - 1 per sequence
    torch.manual_seed(0)
    model, _ = build_lm("small", tokenizer, length, {})
    ids = torch.randint(0, len(tokenizer), (2, length), device=s.device)
    flops = train_flops_per_sample(model, ids, lambda m, x: m(input_ids=x, labels=x).loss, s.device) / (length - 1)
    return f"{common.fmt(rate)} tok/s, {mfu_text(flops, rate, s.device_name(), precision)}", note


def torchrun(s: Setup, strategy: str) -> tuple[str, str]:
    import torch

    from modelcycle.engine import launch

    nproc = 1 if s.dry else torch.cuda.device_count()
    precision, note = s.precision("bf16")
    name = f"digits-{strategy}"
    batch = 32 if s.dry else 64 * nproc
    overrides = [
        f"data.root={s.root / 'digits' / 'data'}",
        f"train.strategy={strategy}",
        *s.image_loader(),
        *s.run_overrides(name, precision, 1 if s.dry else 3, batch),
    ]
    code = launch.launch(["train", str(common.REPO / "configs" / "digits.yaml"), *overrides], nproc)
    if code:
        raise StepFailed(f"torchrun with {nproc} process(es) exited with {code}")
    run = s.root / "runs" / name
    backend = "gloo" if s.dry else "nccl"
    expected = f"processes={nproc} strategy={strategy} backend={backend}"
    if expected not in (run / "events.log").read_text():
        raise StepFailed(f"{run}/events.log does not say '{expected}': the run did not go through torchrun")
    rate = epoch_rate(run, digits_train_count(s.root))
    where = "CPU" if s.dry else f"{nproc} GPU{'s' * (nproc > 1)}"
    if nproc == 1:
        note = "; ".join(filter(None, [note, f"one {'CPU' if s.dry else 'GPU'}: torchrun with 1 process"]))
    return (
        f"{nproc} x {backend} on {where}: {common.fmt(rate)} img/s, val_acc {last_epoch(run)['val_accuracy']:.3f}",
        note,
    )


def lm_serve(s: Setup) -> tuple[str, str]:
    import bench_lm_serve
    from modelcycle.serve.process import ServerProcess

    clients = 16
    hidden, layers, requests, tokens = (64, 2, 1, 4) if s.dry else (256, 6, 3, 64)
    vocab = {"vocab": 300, "chars": 20_000} if s.dry else {}
    package = bench_lm_serve.write_package(s.root / "serve" / "chat", hidden, layers, **vocab)
    settings = ["serve.max_new_tokens=256", "serve.max_queue=256", "serve.max_active=32"]
    with ServerProcess([package], *settings) as server:
        bench_lm_serve.load(server.url, 2, 1, 4)  # warm-up: the first requests pay for lazy set-up
        rate, ttft, texts = bench_lm_serve.load(server.url, clients, requests, tokens)
        served = re.search(r"context \d+ tokens, (\S+)\)", server.log)
    device = served.group(1) if served else "?"
    if len(texts) != clients * requests:
        raise StepFailed(f"{len(texts)} of {clients * requests} requests answered")
    if device.split(":")[0] != s.device:
        raise StepFailed(f"the server put the model on {device}, not {s.device}")
    return f"{clients} clients: {common.fmt(rate)} tok/s, TTFT p50 {statistics.median(ttft):.3f} s, on {device}", ""


STEPS: dict[str, tuple[Callable[[Setup], tuple[str, str]], int]] = {  # name: (step, time limit on a GPU)
    "digits-bf16": (partial(digits, wanted="bf16"), 60),
    "digits-fp16": (partial(digits, wanted="fp16"), 60),
    "resnet18-224": (resnet18, 100),
    "lm-small": (lm_pretrain, 90),
    "ddp": (partial(torchrun, strategy="ddp"), 75),  # torchrun: a launcher and workers to start
    "fsdp": (partial(torchrun, strategy="fsdp"), 75),
    "lm-serve-16": (lm_serve, 90),  # a tokenizer to train, a server to start
}


def run_step(name: str, root: Path, dry: bool) -> int:
    """In the step's own process: run it, write ``{ok, figure, note}`` to its result file."""
    out = root / "results" / name / RESULT
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        figure, note = STEPS[name][0](Setup(root, dry))
        result = {"ok": True, "figure": figure, "note": note}
    except StepFailed as exc:
        result = {"ok": False, "figure": "", "note": str(exc)}
    except Exception as exc:  # any error is this step's FAIL, with its traceback in the log
        traceback.print_exc()
        result = {"ok": False, "figure": "", "note": f"{type(exc).__name__}: {exc}"}
    out.write_text(json.dumps(result))
    return 0 if result["ok"] else 1


# ---------------------------------------------------------------- the driver


def kill_tree(pid: int) -> None:
    """Kill a step's process and everything it started (torchrun's workers run in sessions of
    their own, so a process group would miss them)."""
    import psutil

    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(family, timeout=10)


def drive(name: str, root: Path, dry: bool, timeout: float) -> tuple[str, str, str, float]:
    """Run step ``name`` in a child process: (status, figure, note, seconds)."""
    log = root / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, __file__, "--step", name, "--root", str(root), *(["--dry-run"] if dry else [])]
    env = {
        **os.environ,
        "NO_ALBUMENTATIONS_UPDATE": "1",
        "HF_HUB_OFFLINE": "1",
        # the torchrun workers start `python -m modelcycle`: importable from a checkout too
        "PYTHONPATH": os.pathsep.join(filter(None, [str(common.REPO / "src"), os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(child.pid)
            return "FAIL", "", f"timed out after {timeout:.0f} s", time.perf_counter() - started
        except BaseException:  # Ctrl-C: take the step's processes down with this one
            kill_tree(child.pid)
            raise
    seconds = time.perf_counter() - started
    result_file = root / "results" / name / RESULT
    if not result_file.is_file():
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        return "FAIL", "", f"exit code {child.returncode}: {' '.join(tail)}", seconds
    result = json.loads(result_file.read_text())
    return "PASS" if result["ok"] and child.returncode == 0 else "FAIL", result["figure"], result["note"], seconds


def short(note: str, width: int = 70) -> str:
    """The first line of ``note``, cut to ``width`` characters for the table."""
    line = note.splitlines()[0] if note else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def prepare_digits(root: Path, dry: bool) -> None:
    """The bundled digits, prepared once for every step that trains on them; dry: 8 per class."""
    from modelcycle import prepare, write_digits

    raw = write_digits(root / "digits" / "raw")
    source: Path = raw
    if dry:
        source = root / "digits" / "subset.tsv"
        kept = [
            f"{path}\t{path.parent.name}"
            for folder in sorted(raw.iterdir())
            if folder.is_dir()
            for path in sorted(folder.iterdir())[:8]
        ]
        source.write_text("\n".join(kept) + "\n")
    prepare(source, root / "digits" / "data", val=0.2, seed=0)


def device_line(dry: bool) -> str:
    import torch

    if dry:
        return f"dry run on the CPU (torch {torch.__version__}): every step started and stopped early"
    names = sorted({torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())})
    peaks = ", ".join(f"{p} {peak_tflops(names[0], p) or '?'}" for p in PRECISIONS)
    return (
        f"{torch.cuda.device_count()} x {' / '.join(names)}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
        f"dense peak TFLOPS: {peaks}"
    )


def refuse_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        return
    why = (
        f"this torch ({torch.__version__}) is a CPU build"
        if torch.version.cuda is None
        else f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU"
    )
    raise SystemExit(
        f"gpu_check: {why}. On a CUDA machine rebuild the environment there (rm -rf .venv && make venv: "
        "torch from PyPI is a CUDA build on Linux), or run with --dry-run to check the script on the CPU"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny and short")
    steps = ",".join(STEPS)
    parser.add_argument("--only", default=steps, help=f"comma-separated steps to run, in this order (all: {steps})")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per step (default: each step's own)")
    parser.add_argument("--workdir", type=Path, default=None, help="parent folder of the check's temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (it is kept after a FAIL)")
    parser.add_argument("--step", choices=list(STEPS), help=argparse.SUPPRESS)  # in a step's own process
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:  # a step's own process, started by drive()
        raise SystemExit(run_step(args.step, args.root, args.dry_run))
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    if unknown := [n for n in names if n not in STEPS]:
        parser.error(f"--only: unknown step(s) {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    if not args.dry_run:
        refuse_without_cuda()
    common.console.print(device_line(args.dry_run))
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="modelcycle-gpu-check-", dir=args.workdir))
    started = time.perf_counter()
    rows = []
    _, seconds = common.timed(lambda: prepare_digits(root, args.dry_run))
    rows.append(["data: digits", "PASS", f"{digits_train_count(root)} training images", seconds, ""])
    for name in names:
        left = BUDGET_S - (time.perf_counter() - started)
        if not args.dry_run and left < 5:
            rows.append([name, "FAIL", "", 0.0, f"not started: the {BUDGET_S} s budget is spent"])
            continue
        limit = args.timeout or (DRY_TIMEOUT_S if args.dry_run else min(STEPS[name][1], left))
        common.console.print(f"{name} ...", style="dim")
        status, figure, note, seconds = drive(name, root, args.dry_run, limit)
        rows.append([name, status, figure, seconds, note])
    failed = [row for row in rows if row[1] != "PASS"]
    common.print_table(
        f"GPU check{' (dry run on the CPU)' if args.dry_run else ''}: {len(rows) - len(failed)} of {len(rows)} passed "
        f"in {time.perf_counter() - started:.0f} s",
        ["step", "status", "key figure", "seconds", "note"],
        [[name, status, figure, seconds, short(note)] for name, status, figure, seconds, note in rows],
    )
    for name, _, _, _, note in failed:  # the whole message, and where the step's output is
        common.console.print(f"FAIL {name}: {note}\n    log: {root / 'logs' / (name + '.log')}", markup=False)
    if failed or args.keep:
        common.console.print(f"kept {root} (logs/, runs/)")
    else:
        shutil.rmtree(root, ignore_errors=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
