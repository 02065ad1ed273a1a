"""The optimizer step: torch's for-loop, foreach and fused implementations, on CPU.

modelcycle's engine builds SGD, Adam and AdamW with ``fused=True`` where the parameters allow it
(engine/optim.py); torch's default on CPU is the for-loop. This script times one optimizer step
of each implementation on the same parameters and gradients (the engine's parameter groups:
weight decay off for 1-D parameters), alternating implementations round by round, and prints the
largest difference of the weights after the steps from the for-loop's.

Cases: resnet18 at 64 px (11 M parameters) and the small LM preset (a 6-layer Llama, 5.8 M
parameters with a vocabulary of 8,000). Target: the engine's choice is the fastest and agrees
with the for-loop to float rounding (max abs difference < 1e-5).
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

import common
from modelcycle.config import TrainSection
from modelcycle.engine.optim import param_groups

IMPLEMENTATIONS = {
    "for-loop": {"foreach": False, "fused": False},  # torch's default on CPU
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}
OPTIMIZERS = {
    "adamw": lambda groups, kw: torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.01, **kw),
    "sgd": lambda groups, kw: torch.optim.SGD(groups, lr=0.01, momentum=0.9, weight_decay=0.01, **kw),
}


def models() -> dict[str, nn.Module]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from modelcycle.lm.model import PRESETS
    from modelcycle.models.registry import build_model

    torch.manual_seed(0)
    llama = LlamaConfig(vocab_size=8000, tie_word_embeddings=True, **PRESETS["small"])
    return {
        "resnet18 64 px": build_model("resnet18", num_classes=10, in_channels=3, image_size=64),
        "LM small preset": LlamaForCausalLM(llama),
    }


def step_times(model: nn.Module, optimizer: str, steps: int, rounds: int) -> tuple[dict, dict]:
    """The fastest step of each implementation (on a shared machine the least disturbed one says
    what the step costs), and each one's weights after its steps."""
    grads = [[torch.randn_like(p) for p in model.parameters()] for _ in range(3)]
    copies = {name: copy.deepcopy(model) for name in IMPLEMENTATIONS}
    cfg = TrainSection(weight_decay=0.01)
    built = {name: OPTIMIZERS[optimizer](param_groups(copies[name], cfg), kw) for name, kw in IMPLEMENTATIONS.items()}
    counter = {name: 0 for name in IMPLEMENTATIONS}

    def one(name: str):
        def run() -> float:
            params = list(copies[name].parameters())
            seconds = []
            for _ in range(steps):
                for p, g in zip(params, grads[counter[name] % 3], strict=True):
                    p.grad = g
                start = time.perf_counter()
                built[name].step()
                seconds.append(time.perf_counter() - start)
                counter[name] += 1
            return min(seconds)

        return run

    times = common.alternate({name: one(name) for name in IMPLEMENTATIONS}, rounds)
    weights = {name: [p.detach() for p in copies[name].parameters()] for name in IMPLEMENTATIONS}
    return {name: min(t) for name, t in times.items()}, weights


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "2 rounds of 2 steps", temp_files=False)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per implementation and round")
    args = parser.parse_args()
    common.quick_default(args, "rounds", 2)
    common.quick_default(args, "steps", 2)
    threads = common.set_threads(args.threads)
    load = __import__("os").getloadavg()[0]
    common.console.print(common.environment_line(threads))
    rows, fastest_ok = [], True
    for case, model in models().items():
        for optimizer in OPTIMIZERS:
            times, weights = step_times(model, optimizer, args.steps, args.rounds)
            for name in IMPLEMENTATIONS:
                diff = max((a - b).abs().max().item() for a, b in zip(weights[name], weights["for-loop"], strict=True))
                rows.append([case, optimizer, name, times[name] * 1000, times["for-loop"] / times[name], diff])
            fastest_ok &= min(times, key=times.get) == "fused"
    common.print_table(
        "one optimizer step on CPU (fastest of all rounds, ms)",
        ["model", "optimizer", "implementation", "ms / step", "speed-up vs for-loop", "max abs diff vs for-loop"],
        rows,
        note="modelcycle's engine uses fused",
    )
    agree = all(row[5] < 1e-5 for row in rows)
    common.verdict(fastest_ok and agree, "fused is the fastest in every case and agrees with the for-loop")
    common.warn_if_busy(load, "step times are noisy; the ratios less so")


if __name__ == "__main__":
    main()
