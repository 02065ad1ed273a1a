"""Seconds per DPO step with the reference log-probabilities cached against a live reference,
and seconds per PPO iteration split into rollout, scoring and update.

Both DPO runs train the same policy on the same pydocs preference pairs, batches and seed (the
test suite checks that they end with the same weights); the cached run computes the reference's
log-probabilities once before training (reported apart), the live one runs the frozen reference
in every step, as a DPO loop without caching does. The PPO run answers pydocs prompts and is
judged by a reward model trained for one epoch on the same pairs.

The models are Llama-style with part 1's ``tiny`` shape (hidden 128, 4 layers) on a byte-level
BPE of 600 tokens, fine-tuned (``run.task=sft``) on the pairs' good answers by tests/lm_fixtures.py.
"""

from __future__ import annotations

import statistics
import sys
import time

import common
from modelcycle import load_config, train  # the first use imports torch
from modelcycle.api import train_ppo

sys.path.insert(0, str(common.REPO / "tests"))
from lm_fixtures import MAX_LENGTH, build_sft_policy, write_prefs  # noqa: E402


def dpo_seconds_per_step(root, policy, prefs, cache: bool, epochs: int, batch: int) -> tuple[float, float]:
    config = load_config(
        None,
        [
            "run.task=dpo",
            f"run.name=dpo-{cache}",
            f"run.dir={root}",
            f"model.init_from={policy}",
            f"data.root={prefs}",
            f"lm.context_length={MAX_LENGTH}",
            f"dpo.cache_reference={cache}",
            f"train.epochs={epochs}",
            f"train.batch_size={batch}",
            "train.schedule=none",
        ],
    )
    start = time.perf_counter()
    run = train(config, progress=False)
    wall = time.perf_counter() - start
    epochs_seen = run.epoch_metrics()
    steps = epochs_seen[-1]["step"]
    return sum(m["epoch_time_s"] for m in epochs_seen) / steps, wall


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run (~3 min): 1 DPO epoch, 3 PPO iterations")
    parser.add_argument("--epochs", type=int, default=2, help="DPO epochs per run")
    parser.add_argument("--iterations", type=int, default=10, help="PPO iterations")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    common.quick_default(args, "epochs", 1)
    common.quick_default(args, "iterations", 3)
    threads = common.set_threads(args.threads)
    with common.temp_dir("bench-rlhf", args.workdir, args.keep) as root:
        prefs = write_prefs(root / "prefs")
        policy = build_sft_policy(root / "sft", prefs, epochs=3, shape="{}")
        cached, cached_wall = dpo_seconds_per_step(root, policy, prefs, True, args.epochs, args.batch_size)
        live, live_wall = dpo_seconds_per_step(root, policy, prefs, False, args.epochs, args.batch_size)
        common.print_table(
            f"DPO, seconds per step (batch {args.batch_size} pairs, {MAX_LENGTH} tokens)",
            ["reference", "s/step", "run wall s", "live / cached"],
            [
                ["cached (modelcycle default)", cached, cached_wall, ""],
                ["live every step (baseline)", live, live_wall, common.ratio(live, cached)],
            ],
            note="run wall includes loading, the one-off caching pass (cached run) and validation",
        )
        reward = train(
            load_config(
                None,
                [
                    "run.task=reward",
                    "run.name=reward",
                    f"run.dir={root}",
                    f"model.init_from={policy}",
                    f"data.root={prefs}",
                    f"lm.context_length={MAX_LENGTH}",
                    "train.epochs=1",
                    "train.batch_size=16",
                ],
            ),
            progress=False,
        )
        run = train_ppo(
            None,
            [
                "run.name=ppo",
                f"run.dir={root}",
                f"policy={policy}",
                f"reward={reward.model_dir}",
                f"data.root={prefs}",
                f"lm.context_length={MAX_LENGTH}",
                f"ppo.iterations={args.iterations}",
                "ppo.rollout_batch=16",
                "ppo.minibatch=8",
                "ppo.update_epochs=4",
                "ppo.max_new_tokens=32",
            ],
        )
        lines = run.metrics[1:] or run.metrics  # the first iteration pays one-off warm-up costs
        parts = {k: statistics.median(m[k] for m in lines) for k in ("rollout_s", "score_s", "update_s")}
        total = sum(parts.values())
        common.print_table(
            "PPO, seconds per iteration (16 prompts, 32 new tokens, 4 epochs of minibatch 8)",
            ["part", "s/iteration", "share"],
            [[name.removesuffix("_s"), value, f"{value / total:.0%}"] for name, value in parts.items()]
            + [["total", total, "100%"]],
            note=f"median over iterations 2..{args.iterations}",
        )
        common.console.print(common.environment_line(threads))


if __name__ == "__main__":
    main()
