"""Evaluation of the preference stages: a reward model's pairwise accuracy, and two policies
compared on held-out prompts (``modelcycle evaluate RUN --against BASELINE``).

The comparison samples ``samples`` answers to each held-out prompt from each policy (the same
seed for both; several per prompt, so that no win rate rests on one draw per prompt), scores all
with the reward model and reports the mean rewards, the win rate over the paired answers (ties
count half) and the KL from the baseline: the mean over the policy's own answers of ``Σ_t log π - log ρ``,
with the baseline as ρ, which for a PPO or DPO run against its SFT start is the KL to the
reference the run was held to.
"""

from __future__ import annotations

from pathlib import Path

import torch

from modelcycle.data.preference_batches import prompt_ids
from modelcycle.data.preferences import VAL_FILE, read_pairs, unique_prompts
from modelcycle.errors import UserError
from modelcycle.lm.end_of_turn import end_of_turn_ids
from modelcycle.lm.load import open_lm
from modelcycle.packages import open_package
from modelcycle.progress import progress_bar
from modelcycle.tasks.ppo_rollout import response_figures, sample
from modelcycle.tasks.reward import reward_scores


def held_out_pairs(manifest: dict, data: str | Path | None) -> tuple[list, str]:
    """The pairs in ``data`` (a file or folder of pairs, or a folder holding prefs-val.jsonl), else
    in the held-out files of the data the run trained on."""
    if data is not None:
        path = Path(data)
        sources = [path / VAL_FILE if (path / VAL_FILE).is_file() else path]
    else:
        sources = recorded_val_files(manifest.get("preprocessing", {}))
        if not sources or not all(Path(s).exists() for s in sources):
            where = ", ".join(map(str, sources)) or "the run records no held-out pairs"
            raise UserError(
                f"{where}: not there; pass --data with a file or folder of preference pairs (or a folder with "
                f"{VAL_FILE})"
            )
    return [pair for source in sources for pair in read_pairs(source)], ", ".join(map(str, sources))


def recorded_val_files(preprocessing: dict) -> list[Path]:
    """The held-out pair sources a reward or DPO package records (``data_root``'s prefs-val.jsonl
    in packages from before ``val_files`` was recorded)."""
    if "val_files" in preprocessing:
        return [Path(f) for f in preprocessing["val_files"]]
    return [Path(preprocessing["data_root"]) / VAL_FILE] if preprocessing.get("data_root") else []


def evaluate_reward(run: str | Path, data: str | Path | None = None) -> dict:
    """``pairwise_accuracy`` (chosen scored higher), the mean score margin, the pair count, and
    ``accuracy_by_kind`` where the file's lines carry a ``kind`` (the pydocs pairs do)."""
    model, tokenizer, manifest = (package := open_package(run)).load_scorer()
    pairs, path = held_out_pairs(manifest, data)
    max_length = manifest["preprocessing"]["max_length"]
    prompts = [p.messages for p in pairs]
    chosen = reward_scores(model, tokenizer, prompts, [p.chosen for p in pairs], max_length)
    rejected = reward_scores(model, tokenizer, prompts, [p.rejected for p in pairs], max_length)
    right = (chosen > rejected).tolist()
    by_kind: dict[str, list[bool]] = {}
    for pair, ok in zip(pairs, right, strict=True):
        if pair.kind is not None:
            by_kind.setdefault(pair.kind, []).append(ok)
    return {
        "task": package.task,
        "pairwise_accuracy": sum(right) / len(right),
        "accuracy_by_kind": {kind: sum(oks) / len(oks) for kind, oks in sorted(by_kind.items())},
        "mean_margin": float((chosen - rejected).mean()),
        "num_pairs": len(pairs),
        "data": str(path),
    }


def reward_model_of(run_manifest: dict | None, reward: str | Path | None) -> str:
    if reward:
        return str(reward)
    recorded = (run_manifest or {}).get("reward_model", {}).get("package")
    if recorded:
        return recorded
    raise UserError("no reward model to judge with: pass --reward RUN (a `modelcycle lm reward` run)")


def compare_policies(
    run: str | Path,
    against: str | Path,
    reward: str | Path | None = None,
    data: str | Path | None = None,
    samples: int = 4,
    prompts: int | None = None,
    max_new_tokens: int = 48,
    temperature: float = 1.0,  # the policy's own distribution, so the KL estimate is unbiased
    seed: int = 0,
) -> dict:
    """Win rate, mean rewards and KL of ``run`` against the baseline policy ``against``: ``samples``
    answers from each to each of the first ``prompts`` distinct held-out prompts (all by default)."""
    policy, tokenizer, manifest = open_lm(run)
    baseline, base_tokenizer, _ = open_lm(against)
    scorer, score_tokenizer, score_manifest = open_package(reward_model_of(manifest, reward)).load_scorer()
    recorded = manifest if manifest and recorded_val_files(manifest.get("preprocessing", {})) else None
    pairs, path = held_out_pairs(recorded or score_manifest, data)  # a PPO run: the reward model's held-out pairs
    distinct = unique_prompts(pairs)[:prompts]
    prompts = [m for m in distinct for _ in range(samples)]
    max_length = score_manifest["preprocessing"]["max_length"]
    answers, figures = {}, {}
    with progress_bar("sampling answers", 2) as advance:
        for name, model, tok in (("policy", policy, tokenizer), ("baseline", baseline, base_tokenizer)):
            torch.manual_seed(seed)
            encoded = [prompt_ids(tok, m)[-(max_length - max_new_tokens) :] for m in prompts]
            stop = end_of_turn_ids(tok, getattr(model, "generation_config", None))
            rollout = sample(model, encoded, tok.pad_token_id, stop, max_new_tokens, temperature)
            answers[name] = rollout.texts(tok)
            figures[name] = rollout
            advance()
    same_tokens = tokenizer.get_vocab() == base_tokenizer.get_vocab()
    kl = None
    if same_tokens:
        rollout = figures["policy"]
        with torch.no_grad():
            own, _, _ = response_figures(policy, rollout, 1.0, with_values=False)
            ref, _, _ = response_figures(baseline, rollout, 1.0, with_values=False)
        kl = float(((own - ref) * rollout.mask).sum(1).mean())
    scores = {k: reward_scores(scorer, score_tokenizer, prompts, answers[k], max_length) for k in answers}
    wins = (scores["policy"] > scores["baseline"]).float() + 0.5 * (scores["policy"] == scores["baseline"]).float()
    return {
        "win_rate": float(wins.mean()),
        "mean_reward": float(scores["policy"].mean()),
        "baseline_reward": float(scores["baseline"].mean()),
        "kl": kl,
        "num_prompts": len(distinct),
        "num_answers": len(prompts),
        "policy": str(run),
        "baseline": str(against),
        "reward_model": score_manifest["_dir"],
        "data": str(path),
        "samples": [
            {
                "prompt": m[-1]["content"],
                "answer": a,
                "reward": float(r),
                "baseline_answer": b,
                "baseline_reward": float(s),
            }
            for m, a, b, r, s in zip(
                prompts, answers["policy"], answers["baseline"], scores["policy"], scores["baseline"], strict=True
            )
        ],
    }
