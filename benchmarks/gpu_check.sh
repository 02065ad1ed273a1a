#!/usr/bin/env bash
# The GPU check (issue 18, item 4; docs/benchmarks.md, "GPU check"): digits in bf16 and fp16,
# resnet18 at 224 px (images/s, MFU), LM pretraining of the small preset (tokens/s, MFU), DDP and
# FSDP through torchrun, LM serving under 16 clients; one table, PASS/FAIL per step, under 8
# minutes on one H100/H200. Exit code 1 if any step failed; its log path is in the table.
#
# On a CUDA machine, from the repository root (a copy of it, with or without .venv):
#     bash benchmarks/gpu_check.sh                 # every step, on the GPU(s)
#     bash benchmarks/gpu_check.sh --only ddp,fsdp # some steps
#     bash benchmarks/gpu_check.sh --dry-run       # on the CPU, tiny: checks the script itself
# Without .venv this runs `make venv` first (needs PyPI; not counted in the 8 minutes). torch 2.13.0
# from PyPI is a CUDA build on Linux: nothing here asks for the CPU wheel. A .venv carried from a
# CPU-only machine holds the CPU build: the check says so and stops; rebuild it there
# (rm -rf .venv && make venv). Steps use every visible GPU for DDP/FSDP (one GPU: one process);
# CUDA_VISIBLE_DEVICES picks others.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    make venv
fi
exec .venv/bin/python benchmarks/gpu_check.py "$@"
