"""Evaluate, predict and compare whatever a run or package holds: the package's task says which
evaluator reads it (image or text classifier, language model, reward model, a task of one's own)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from modelcycle import runfiles
from modelcycle.errors import DataError, UserError
from modelcycle.evaluation.evaluate import evaluate as evaluate_images
from modelcycle.evaluation.predict import iter_predict as iter_predict_images
from modelcycle.evaluation.text import evaluate_text, predict_text
from modelcycle.runs import Run
from modelcycle.tasks import registry
from modelcycle.tasks.plugin import TaskPlugin


def evaluate(run: str | Path | Run, split: str = "val", data: str | Path | None = None, backend: str = "auto") -> dict:
    """Metrics and a report in ``RUN/report/`` for a run's model (or a package) on a split or a
    manifest (images) / JSONL file (texts); the package's task plugin says how."""
    path = Path(run.path if isinstance(run, Run) else run)
    plugin = registry.for_package(path)
    evaluator = _evaluator(plugin, "evaluate")
    # the report is written last: a full disk there is an error naming the file, not a traceback
    with runfiles.disk_errors(path, "run evaluate again"):
        return evaluator(run, split=split, data=data, backend=backend)


def _images(run, split="val", data=None, backend="auto") -> dict:
    return evaluate_images(run, split=split, data=data, backend=backend)


def _texts(run, split="val", data=None, backend="auto") -> dict:
    return evaluate_text(run, split=split, data=data, backend=backend)


def _language_model(run, split="val", data=None, backend="auto") -> dict:
    """Causal LMs: perplexity, answer loss, sample answers."""
    from modelcycle.evaluation.lm import evaluate_lm

    return evaluate_lm(run, data=data)


def _reward_model(run, split="val", data=None, backend="auto") -> dict:
    """Pairwise accuracy on held-out preference pairs."""
    from modelcycle.evaluation.policy import evaluate_reward

    return evaluate_reward(run.path if isinstance(run, Run) else run, data=data)


def _predict_texts(run, inputs, progress=False, **options) -> list[dict]:
    return predict_text(run, [str(i) for i in inputs], **options)


# the evaluators this layer provides, by the name a built-in plugin gives (tasks/<task>.py); a
# plugin of one's own passes its function instead
EVALUATORS: dict[str, Callable[..., dict]] = {
    "images": _images,
    "texts": _texts,
    "language_model": _language_model,
    "reward_model": _reward_model,
}
PREDICTORS: dict[str, Callable[..., Iterable[dict]]] = {"images": iter_predict_images, "texts": _predict_texts}


def _evaluator(plugin: TaskPlugin, verb: str) -> Callable:
    given = plugin.evaluate if verb == "evaluate" else plugin.predict
    if callable(given):
        return given
    found = (EVALUATORS if verb == "evaluate" else PREDICTORS).get(given or "")
    if found is None:
        raise UserError(f"run.task={plugin.name}: its models cannot be used with `modelcycle {verb}`")
    return found


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


def iter_predict(
    run: str | Path | Run,
    inputs: list[str | Path],
    topk: int = 5,
    backend: str = "auto",
    batch_size: int | None = None,
    progress: bool = False,
) -> Iterator[dict]:
    """Top-k classes per input, one dict each, in order: image files (folders and globs expand
    to theirs; a file that cannot be read gets ``path`` and ``error`` instead, yielded as soon as
    its batch is done), or texts for a text classifier. ``batch_size`` None: the task's default."""
    path = Path(run.path if isinstance(run, Run) else run)
    plugin = registry.for_package(path)
    predictor = _evaluator(plugin, "predict")
    options = {"topk": topk, "backend": backend} | ({} if batch_size is None else {"batch_size": batch_size})
    if callable(plugin.predict):  # a plugin's own predict takes (run, inputs, topk=, backend=)
        if batch_size is not None:
            raise UserError(f"run.task={plugin.name}: its predict takes no batch size; leave --batch-size out")
        yield from predictor(run, inputs, **options)
    else:
        yield from predictor(run, inputs, progress=progress, **options)


def predict(
    run: str | Path | Run, inputs: list[str | Path], topk: int = 5, backend: str = "auto", batch_size: int | None = None
) -> list[dict]:
    """:func:`iter_predict`'s answers as a list; a file that cannot be read is a DataError that
    names it (and any others), after every file was tried."""
    results = list(iter_predict(run, inputs, topk=topk, backend=backend, batch_size=batch_size))
    failed = [r for r in results if "error" in r]
    if len(failed) == 1:
        raise DataError(f"cannot predict {failed[0]['path']}: {failed[0]['error']}")
    if failed:
        listed = "; ".join(f"{r['path']}: {r['error']}" for r in failed[:5])
        more = f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
        raise DataError(
            f"cannot predict {len(failed)} of {len(results)} files: {listed}{more}. "
            "modelcycle.iter_predict answers the others and gives each failure a row of its own"
        )
    return results
