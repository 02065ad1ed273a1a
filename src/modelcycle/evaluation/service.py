"""Evaluate, predict and compare whatever a run or package holds: the package's task says which
evaluator reads it (image or text classifier, language model, reward model)."""

from __future__ import annotations

from pathlib import Path

from modelcycle import runfiles, runs
from modelcycle.evaluation.evaluate import evaluate as evaluate_images
from modelcycle.evaluation.predict import predict as predict_images
from modelcycle.evaluation.text import evaluate_text, predict_text
from modelcycle.runs import Run


def evaluate(run: str | Path | Run, split: str = "val", data: str | Path | None = None, backend: str = "auto") -> dict:
    """Metrics and a report in ``RUN/report/`` for a run's model (or a package) on a split or a
    manifest (images) / JSONL file (texts); the package says which."""
    task = _task(run)
    # the report is written last: a full disk there is an error naming the file, not a traceback
    with runfiles.disk_errors(Path(run.path if isinstance(run, Run) else run), "run evaluate again"):
        if task in ("lm", "sft", "dpo", "ppo"):  # causal LMs: perplexity, answer loss, sample answers
            from modelcycle.evaluation.lm import evaluate_lm

            return evaluate_lm(run, data=data)
        if task == "reward":  # pairwise accuracy on held-out preference pairs
            from modelcycle.evaluation.policy import evaluate_reward

            return evaluate_reward(run.path if isinstance(run, Run) else run, data=data)
        if task == "text_classify":
            return evaluate_text(run, split=split, data=data, backend=backend)
        return evaluate_images(run, split=split, data=data, backend=backend)


def compare(
    run: str | Path | Run,
    against: str | Path | Run,
    reward: str | Path | None = None,
    data: str | Path | None = None,
    samples: int = 4,
    max_new_tokens: int = 48,
) -> dict:
    """Answers to held-out prompts from the policy ``run`` and the baseline ``against``, judged by
    the reward model (the PPO run's own, or ``reward``): win rate, mean rewards, KL to the baseline;
    ``samples`` answers from each policy to each held-out prompt."""
    from modelcycle.evaluation.policy import compare_policies

    path = lambda r: r.path if isinstance(r, Run) else r  # noqa: E731
    return compare_policies(path(run), path(against), reward, data, samples=samples, max_new_tokens=max_new_tokens)


def predict(run: str | Path | Run, inputs: list[str | Path], topk: int = 5, backend: str = "auto") -> list[dict]:
    """Top-k classes per input: image files, or texts for a text classifier."""
    if _task(run) == "text_classify":
        return predict_text(run, [str(i) for i in inputs], topk=topk, backend=backend)
    return predict_images(run, inputs, topk=topk, backend=backend)


def _task(run: str | Path | Run) -> str:
    path = Path(run.path if isinstance(run, Run) else run)
    ours = (path / runs.MANIFEST).is_file() or (path / "model" / runs.MANIFEST).is_file()
    if not ours and (path / "config.json").is_file():  # a plain Hugging Face folder (a downloaded Qwen, say)
        return "lm"
    return runs.read_manifest(path).get("task", "classify")
