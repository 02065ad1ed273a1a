"""Generation speed: modelcycle's decoding loop with and without the KV cache, against
transformers' own ``model.generate`` on the same model, prompts and token count, in one process.

Models are Llama-style with random weights (speed does not depend on what the weights say):
``tiny`` (~4 M parameters, the size of the pretraining preset that trains on a CPU in minutes)
and ``small`` (~30 M), with the tokenizer the tests use (byte-level BPE on Python's docs).
Generation never stops early: the end-of-turn ids are cleared, so each call makes exactly
``--new-tokens`` tokens per prompt. Greedy decoding, so both sides must pick the same tokens
(checked and printed). Figures are medians of alternating rounds (``common.alternate``).

    python benchmarks/bench_lm_generate.py [--quick] [--threads N] [--model PATH]
"""

from __future__ import annotations

import sys
import time

import torch

import common
from modelcycle.lm.generate import LanguageModel
from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling

sys.path.insert(0, str(common.REPO / "tests" / "lm"))  # the tests' tiny-model builder: one recipe, not two
from tiny_lm import build_model, build_tokenizer  # noqa: E402

TARGET = 0.9  # ours / transformers with the cache (ours also detokenizes each token for streaming)
SIZES = {  # name: (hidden, layers, heads, vocabulary, context)
    "tiny": (256, 4, 4, 4000, 512),
    "small": (512, 8, 8, 8000, 1024),
}


def make_lm(size: str) -> LanguageModel:
    hidden, layers, heads, vocab, context = SIZES[size]
    tokenizer = build_tokenizer(vocab, chars=2_000_000)
    model = build_model(tokenizer, hidden=hidden, layers=layers, heads=heads, context=context)
    return LanguageModel(model, tokenizer, name=size)


def ours(lm: LanguageModel, prompts: list[list[int]], new: int, cache: bool) -> tuple[float, list[list[int]]]:
    sampling = Sampling(temperature=0, max_new_tokens=new, use_cache=cache)
    start = time.perf_counter()
    results = lm.generate(prompts, sampling)
    seconds = time.perf_counter() - start
    return len(prompts) * new / seconds, [r.token_ids for r in results]


@torch.inference_mode()
def reference(lm: LanguageModel, prompts: list[list[int]], new: int, cache: bool) -> tuple[float, list[list[int]]]:
    ids, mask = lm.pad_left(prompts)
    start = time.perf_counter()
    out = lm.model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        use_cache=cache,
        eos_token_id=None,
        pad_token_id=lm.pad_id,
    )
    seconds = time.perf_counter() - start
    return len(prompts) * new / seconds, out[:, ids.shape[1] :].tolist()


def bench(lm: LanguageModel, batch: int, prompt_len: int, new: int, rounds: int) -> list[list[object]]:
    lm.eos_ids = []  # fixed-length runs: the random model may draw an end-of-turn token
    generator = torch.Generator().manual_seed(0)
    vocab = len(lm.tokenizer)
    prompts = [torch.randint(10, vocab, (prompt_len - 3 * i,), generator=generator).tolist() for i in range(batch)]
    tokens: dict[str, list[list[int]]] = {}

    def run(name, fn, cache):
        def measure() -> float:
            rate, tokens[name] = fn(lm, prompts, new, cache)
            return rate

        return measure

    ours(lm, prompts, 4, True), reference(lm, prompts, 4, True)  # warm-up
    rates = common.alternate(
        {
            "ours, cache": run("ours, cache", ours, True),
            "transformers, cache": run("transformers, cache", reference, True),
            "ours, no cache": run("ours, no cache", ours, False),
            "transformers, no cache": run("transformers, no cache", reference, False),
        },
        rounds,
    )
    same = all(tokens[name] == tokens["transformers, cache"] for name in tokens)
    median = {name: common.median(values) for name, values in rates.items()}
    parameters = sum(p.numel() for p in lm.model.parameters()) / 1e6
    label = f"{lm.name} ({parameters:.1f} M), batch {batch}, prompt {prompt_len}, {new} new"
    return [
        [
            label,
            median["ours, cache"],
            median["ours, no cache"],
            common.ratio(median["ours, cache"], median["ours, no cache"]),
            median["transformers, cache"],
            common.ratio(median["ours, cache"], median["transformers, cache"]),
            median["transformers, no cache"],
            same,
        ]
    ]


def main() -> None:
    parser = common.make_parser(__doc__.split("\n")[0], "tiny model only, fewer tokens and rounds", temp_files=False)
    parser.add_argument("--sizes", default="tiny,small", help="built models to measure: " + ", ".join(SIZES))
    parser.add_argument("--model", default=None, help="also measure this LM folder (a run, a package, a HF folder)")
    parser.add_argument("--new-tokens", type=int, default=128, help="tokens generated per prompt")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="prompt length (the batch's longest)")
    parser.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per figure")
    args = parser.parse_args()
    common.quick_default(args, "sizes", "tiny")
    common.quick_default(args, "new_tokens", 32)
    common.quick_default(args, "rounds", 1)
    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads))
    models = [make_lm(size) for size in args.sizes.split(",") if size]
    if args.model:
        models.append(load_lm(args.model, device="cpu"))
    rows = []
    for lm in models:
        for batch in (int(b) for b in args.batches.split(",")):
            common.console.print(f"measuring {lm.name}, batch {batch} ...", style="dim")
            rows += bench(lm, batch, args.prompt_tokens, args.new_tokens, args.rounds)
    common.print_table(
        "Generation tokens/s (greedy, CPU): modelcycle's loop vs transformers' generate",
        [
            "model, batch, tokens",
            "ours, cache",
            "ours, no cache",
            "cache speed-up",
            "transformers, cache",
            "ours / transformers",
            "transformers, no cache",
            "same tokens",
        ],
        rows,
        note="tokens/s = new tokens of the whole batch per second; medians of alternating rounds.",
    )
    common.verdict(all(row[3] > 1 for row in rows), "the KV cache is faster than recomputing, in every case")
    common.verdict(all(row[7] for row in rows), "our loop picks the same tokens as transformers' generate")
    worst = min(row[5] for row in rows)
    common.verdict(worst >= TARGET, f"ours / transformers with the cache >= {TARGET}x (worst case {worst:.3f}x)")


if __name__ == "__main__":
    main()
