"""Generation: modelcycle's decoding loop (``load_lm`` + ``LanguageModel.generate``) against
transformers' ``model.generate`` on the same model folder.

The model is bench_lm_serve.py's: a Llama of width 256 and 4 layers with random weights and the
tests' byte-level BPE (no network), written once as a Hugging Face folder that both sides load.
Both generate greedily with the KV cache for the same batch of prompts (random token ids, seeded),
exactly ``NEW`` tokens each (end-of-turn ids cleared, so neither stops early). Samples: new tokens.
Quality: whether both sides picked the same tokens (greedy: they must).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import harness

PEER = "transformers generate"
QUALITY = "same tokens"
CASES = {"generate": "generation, Llama 256x4"}


def prepare(case: str, root: Path, quick: bool) -> dict:
    import bench_lm_serve

    package = bench_lm_serve.write_package(root, hidden=256, layers=4)
    batch, new = (4, 32) if quick else (8, 128)
    return {
        "package": str(package),
        "batch": batch,
        "prompt": 64,
        "new": new,
        "what": f"batch {batch}, prompts of 64 tokens, {new} new tokens each, greedy",
    }


def prompts(s: dict) -> list[list[int]]:
    import torch

    generator = torch.Generator().manual_seed(0)
    # prompts of different lengths, so that both sides pad
    return [torch.randint(10, 1000, (s["prompt"] - 3 * i,), generator=generator).tolist() for i in range(s["batch"])]


def digest(tokens: list[list[int]]) -> str:
    return hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:12]


def modelcycle(case: str, root: Path) -> dict:
    from modelcycle.lm.load import load_lm
    from modelcycle.lm.sampling import Sampling

    s = harness.settings(root)
    lm = load_lm(s["package"], device="cpu")
    lm.eos_ids = []  # fixed-length answers: random weights may draw an end-of-turn token
    start = time.perf_counter()
    results = lm.generate(prompts(s), Sampling(temperature=0, max_new_tokens=s["new"]))
    seconds = time.perf_counter() - start
    return {"samples": s["batch"] * s["new"], "seconds": seconds, "quality": digest([r.token_ids for r in results])}


def peer(case: str, root: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = harness.settings(root)
    tokenizer = AutoTokenizer.from_pretrained(s["package"])
    model = AutoModelForCausalLM.from_pretrained(s["package"]).eval()
    batch = prompts(s)
    longest = max(map(len, batch))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in batch])  # padded on the left
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=s["new"],
            min_new_tokens=s["new"],
            do_sample=False,
            eos_token_id=None,
            pad_token_id=pad,
        )
    seconds = time.perf_counter() - start
    return {"samples": s["batch"] * s["new"], "seconds": seconds, "quality": digest(out[:, longest:].tolist())}


if __name__ == "__main__":
    harness.child_main({"modelcycle": modelcycle, "peer": peer})
