"""The model package a finished run leaves in ``RUN/model/``, from its best (or last) checkpoint."""

from __future__ import annotations

from modelcycle import runs
from modelcycle.config import Config
from modelcycle.engine import checkpoint
from modelcycle.lm import merge as lora_merge
from modelcycle.packages import ADAPTER
from modelcycle.runs import Run
from modelcycle.tasks import registry


def write_run_package(run: Run, meta: dict, state, config: Config, package=runs.write_package, recorded=None) -> None:
    """``recorded``: the validation outputs a ``monitor.profile_recorder.ValidationRecorder`` kept."""
    best = run.checkpoints / "best.pt"
    source = best if best.exists() else run.checkpoints / "last.pt"
    ck = checkpoint.load(source)
    weights = ck["ema"]["model"] if ck.get("ema") else ck["model"]
    # the trainer's own record of each epoch; metrics.jsonl only for a state without one
    epochs = state.history or run.epoch_metrics()
    chosen = next((m for m in epochs if m["epoch"] == state.best_epoch), epochs[-1] if epochs else {})
    package(
        run.model_dir,
        weights,
        {
            **meta,
            "metrics": {k: v for k, v in chosen.items() if isinstance(v, float | int)},
            "source_run": str(run.path.resolve()),
            "checkpoint": source.name,
            "monitor": config.train.monitor,
        },
    )
    if registry.for_manifest(meta).can("monitor_profile"):  # what `modelcycle monitor` compares traffic with
        from modelcycle.monitor.profile import profile_after_training

        profile_after_training(run.model_dir, config.monitor, recorded if source == best else None)


def merge_lora(source, out, base=None) -> dict:
    """``modelcycle lm merge``: fold a LoRA run's (or a peft folder's) adapter into its base weights
    as a plain package; returns its manifest. A bare adapter is the task that opens such folders."""
    return lora_merge.merge(source, out, registry.for_kind(ADAPTER).name, base)
