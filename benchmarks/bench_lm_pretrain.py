"""Language models: pretraining throughput against a hand-written PyTorch loop, and LoRA against
full fine-tuning.

1. Tokens per second: `modelcycle` pretraining (run.task=lm: the engine, its sampler, the
   summed next-token loss, its log windows; checkpoints at epoch end only) against a
   hand-written loop over the same Hugging Face model (the same Llama preset, built by the same
   function with the same seed), the same packed pydocs sequences, batch size, sequence length
   and AdamW settings: ``loss = model(input_ids, labels=input_ids).loss; loss.backward();
   opt.step()``. The two run in lockstep in one process: after each engine step a callback runs
   one hand-written step, so every pair of steps meets the same machine. An engine step is the
   time from the end of one hand step to the end of the next engine step (data loading,
   forward, backward, optimizer, logging, callbacks: all the engine does per step); steps that
   span an epoch end (validation, checkpoint) and the short last batch of an epoch are left
   out. Tokens/s = batch x length / the median step. (Runs one after the other spread by +/- 5 %
   on this 2-core machine, more than the gap measured.) Target: modelcycle >= 0.97 x.
2. LoRA r=8 (q_proj/v_proj) against full fine-tuning: SFT on the pydocs instructions of a
   ``--lora-size`` Llama (``base`` by default, 27 M parameters, built fresh: memory does not
   depend on the weights' values): trainable parameters, and the peak resident memory of a
   fresh process that trains an epoch, with its RSS after imports for reference. The peak is
   the kernel's high-water mark of the process (``VmHWM``), which starts afresh at ``exec``;
   ``ru_maxrss`` would not do, since a spawned child inherits its parent's. RSS counts
   everything (Python, torch, the data), so the difference is what LoRA saves: gradients and
   AdamW state for the frozen weights.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from pathlib import Path

import common

REPO = common.REPO


def prepare(root: Path) -> tuple[Path, Path]:
    from modelcycle.data.pydocs import write_pydocs
    from modelcycle.lm.tokenizer import train_tokenizer

    write_pydocs(root / "pydocs")
    train_tokenizer([root / "pydocs" / "corpus.txt"], 4000, root / "tok")
    return root / "pydocs", root / "tok"


def recipe(root: Path, data: Path, tok: Path, args) -> list[str]:
    return [
        "run.task=lm",
        f"run.dir={root / 'runs'}",
        "model.name=llama",
        f"lm.size={args.size}",
        f"lm.tokenizer={tok}",
        f"lm.context_length={args.length}",
        f"lm.train_files=[{data / 'corpus.txt'}]",
        f"train.epochs={args.epochs}",
        f"train.batch_size={args.batch}",
        "train.lr=0.001",
        "train.schedule=none",
        "train.monitor=train_loss",
        "train.log_every=8",
        "train.device=cpu",
    ]


class HandLoop:
    """The plainest PyTorch loop, one step per call."""

    def __init__(self, data: Path, tok: Path, args):
        import torch

        from modelcycle.data.lm_data import pack, token_stream
        from modelcycle.lm.model import build_lm
        from modelcycle.lm.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tok)
        torch.manual_seed(0)
        self.model, _ = build_lm(args.size, tokenizer, args.length, {})
        self.model.train()
        self.sequences = pack(token_stream([str(data / "corpus.txt")], tokenizer), args.length, "corpus")
        self.order = torch.randperm(len(self.sequences), generator=torch.Generator().manual_seed(0))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=0.001, weight_decay=0.0)
        self.batch, self.step = args.batch, 0

    def __call__(self) -> None:
        ids = self.sequences[self.order[(self.step * self.batch) % len(self.sequences) :][: self.batch]]
        loss = self.model(input_ids=ids, labels=ids).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1


def lockstep_seconds(root: Path, overrides: list[str], hand: HandLoop) -> tuple[list[float], list[float]]:
    """Seconds per full-batch step of the engine and of ``hand``, interleaved step by step."""
    from modelcycle import load_config, train
    from modelcycle.engine.callbacks import Callback

    class Lockstep(Callback):
        def __init__(self):
            self.engine, self.hand, self.mark = [], [], None

        def on_epoch_start(self, trainer) -> None:
            self.mark = None  # the step after validation and the checkpoint is not a plain step

        def on_step_end(self, trainer) -> None:
            now = time.perf_counter()
            full = trainer.state.batch_in_epoch < trainer.batches_per_epoch  # the last batch is short
            if self.mark is not None and full:
                self.engine.append(now - self.mark)
            if full:
                hand()
                self.hand.append(time.perf_counter() - now)
            self.mark = time.perf_counter()

    clock = Lockstep()
    train(load_config(None, [*overrides, "run.name=lockstep"]), progress=False, overwrite=True, callbacks=[clock])
    return clock.engine, clock.hand


def memory_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from /proc (Linux); elsewhere the
    peak RSS that getrusage reports, which may include the parent's."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sft_child(overrides: list[str], queue) -> None:
    import torch

    torch.set_num_threads(int(overrides.pop()))
    from modelcycle import load_config, train
    from modelcycle.runs import read_manifest

    idle = memory_mb("VmRSS")
    start = time.perf_counter()
    run = train(load_config(None, overrides), progress=False, overwrite=True)
    tuning = read_manifest(run.path)["fine_tuning"]
    queue.put((tuning["trainable"], tuning["total"], idle, memory_mb("VmHWM"), time.perf_counter() - start))


def lora_rows(root: Path, data: Path, tok: Path, args) -> list[list]:
    chats = data / "sft-train.jsonl"
    if args.quick:  # 80 conversations: the memory figures need a few steps, not the whole epoch
        (data / "sft-quick.jsonl").write_text("".join(chats.read_text().splitlines(keepends=True)[:80]))
        chats = data / "sft-quick.jsonl"
    rows = []
    context = multiprocessing.get_context("spawn")
    for label, extra in (("full fine-tuning", ["train.lr=0.0005"]), ("LoRA r=8", ["lora.r=8", "train.lr=0.003"])):
        overrides = [
            "run.task=sft",
            f"run.dir={root / 'runs'}",
            f"run.name=sft-{label.split()[0]}",
            "model.name=llama",
            f"lm.size={args.lora_size}",
            f"lm.tokenizer={tok}",
            f"lm.context_length={args.length}",
            f"lm.train_files=[{chats}]",
            "train.epochs=1",
            f"train.batch_size={args.batch}",
            "train.monitor=train_loss",
            "train.device=cpu",
            *extra,
            str(args.threads),
        ]
        queue = context.Queue()
        child = context.Process(target=_sft_child, args=(overrides, queue))
        child.start()
        trainable, total, idle, peak, seconds = queue.get()
        child.join()
        rows.append([label, trainable, total, trainable / total, idle, peak, seconds])
    return rows


def _spread(seconds: list[float], tokens: int) -> str:
    ordered = sorted(tokens / s for s in seconds)
    return f"{ordered[len(ordered) // 10]:,.0f}..{ordered[len(ordered) * 9 // 10]:,.0f}"


def main() -> None:
    parser = common.make_parser(__doc__.split("\n")[0], "one epoch (32 steps a side), LoRA on 80 conversations")
    parser.add_argument("--size", default="tiny", help="lm.size preset of the model")
    parser.add_argument("--length", type=int, default=256, help="sequence length (lm.context_length)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the pydocs corpus per measurement")
    parser.add_argument("--lora-size", default="base", help="lm.size preset of the LoRA / full fine-tuning comparison")
    args = parser.parse_args()
    common.quick_default(args, "epochs", 1)
    threads = common.set_threads(args.threads)
    common.console.print(common.environment_line(threads))
    with common.temp_dir("lm", args.workdir, args.keep) as root:
        data, tok = prepare(root)
        overrides = recipe(root, data, tok, args)
        engine, hand = lockstep_seconds(root, overrides, HandLoop(data, tok, args))
        tokens = args.batch * args.length
        ours, theirs = tokens / common.median(engine), tokens / common.median(hand)
        common.print_table(
            f"pretraining tokens/s: {args.size} Llama, batch {args.batch} x {args.length} tokens, "
            f"{args.epochs} epochs, in lockstep",
            ["loop", "steps", "tokens/s (median step)", "steps' tokens/s (p10..p90)", "ratio"],
            [
                ["modelcycle lm pretrain", len(engine), ours, _spread(engine, tokens), common.ratio(ours, theirs)],
                ["hand-written PyTorch loop", len(hand), theirs, _spread(hand, tokens), 1.0],
            ],
        )
        common.verdict(ours >= 0.97 * theirs, f"modelcycle at {common.ratio(ours, theirs):.3f} x (target >= 0.97)")
        rows = lora_rows(root, data, tok, args)
        common.print_table(
            f"SFT of a {args.lora_size} Llama, one epoch of pydocs instructions (80 with --quick): LoRA against full",
            ["method", "trainable", "total", "share", "RSS after imports MB", "peak RSS MB", "seconds"],
            rows,
            note="peak RSS: VmHWM of a fresh process that trained the epoch (CPU)",
        )


if __name__ == "__main__":
    main()
