"""What a task is to the rest of modelcycle: one :class:`TaskPlugin` per task (classify,
text_classify, distill, lm, sft, reward, dpo, ppo, and any a user registers), looked up by name in
tasks/registry.py. Everything task-specific hangs off it (its defaults, its setup, how its
package is evaluated and predicted with, what the CLI shows), so no module outside ``tasks/``
compares task names: it asks the plugin.

A task written outside modelcycle is a module with a ``PLUGIN = TaskPlugin(...)``, registered by
``modelcycle.register_task(PLUGIN)``, an entry point in the ``modelcycle.tasks`` group, or by
naming its module in ``MODELCYCLE_TASKS`` (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from modelcycle.config import valid_keys

if TYPE_CHECKING:
    from modelcycle.config import Config

# what a plugin may declare in ``capabilities``; the services ask for these, never for a name
CAPABILITIES = frozenset(
    {
        "crossval",  # setup takes train_items/val_items (cross-validation folds, tuning subsets)
        "monitor_profile",  # the package gets the feature profile `modelcycle monitor` compares traffic with
        "mlflow_pytorch",  # MLflow gets a PyTorch model of the package (an image classifier: N, C, H, W input)
        "chat",  # its language models answer chat turns (pretraining-only models continue text)
    }
)
VIEWS = ("metrics", "classification", "language_model", "pairs")  # how `modelcycle evaluate` shows evaluate's result


# what the Hugging Face text tasks read of ``model``: all of it but model.weights (a checkpoint file of
# plain tensors, which only image runs read), so that a text run refuses it instead of ignoring it
TEXT_MODEL_KEYS = ("model.name", "model.args", "model.init_from", "model.freeze", "model.lora")


@dataclass
class SetupContext:
    """What the training service knows about the run beyond its config."""

    run_dir: Path
    resume: bool = False
    progress: bool = True
    train_items: list | None = None  # cross-validation folds: the items instead of data.root's splits
    val_items: list | None = None


@dataclass
class TaskParts:
    """What one loop needs from a task's setup: the step (an engine Task), the model, the loaders,
    the package's ``modelcycle.json`` less what training adds, its writer, extra callbacks and notes."""

    task: Any
    model: Any  # torch.nn.Module
    train_loader: Any
    val_loader: Any
    meta: dict
    write_package: Callable[[Path, dict, dict], Path]
    callbacks: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what setup did to the model, for events.log and the terminal


def parts_of(built: Any) -> TaskParts:
    """The parts of a task's own set-up record that holds the same names (``task``, ``model``,
    ``train_loader``, ``val_loader``, ``meta``, ``write_package``, and ``callbacks``/``notes`` if any)."""
    return TaskParts(
        built.task,
        built.model,
        built.train_loader,
        built.val_loader,
        built.meta,
        built.write_package,
        list(getattr(built, "callbacks", [])),
        list(getattr(built, "notes", [])),
    )


def _frozen(mapping: Mapping) -> Mapping:
    return MappingProxyType({k: _frozen(v) if isinstance(v, Mapping) else v for k, v in mapping.items()})


@dataclass(frozen=True)
class TaskPlugin:
    """One task. ``setup(config, ctx) -> TaskParts`` builds a run; ``evaluate(run, split=, data=,
    backend=) -> dict`` and ``predict(run, inputs, topk=, backend=) -> list[dict]`` read its package."""

    name: str  # run.task, and the "task" its packages' modelcycle.json records
    setup: Callable[[Config, SetupContext], TaskParts] | None = None
    evaluate: Callable[..., dict] | None = None
    predict: Callable[..., list[dict]] | None = None
    # config values under the recipe (nested sections): they fill what the caller left unset
    defaults: Mapping[str, Any] = field(default_factory=dict)
    summary_metrics: tuple[str, ...] = ("val_accuracy", "val_loss")  # what `train` prints at the end
    capabilities: frozenset[str] = frozenset()
    view: str = "metrics"
    # the loop that trains it: None is the engine's epoch loop (engine/trainer.py); a task with a
    # loop of its own (PPO's rollouts and updates) gives its class, ``Loop(ctx, config, progress=)``
    # with ``.fit(resume)`` and ``.write_package(run)``, run on the same RunContext
    loop: Callable[..., Any] | None = None
    serve_protocols: tuple[str, ...] = ()  # what `modelcycle serve` offers its packages (serve/protocols)
    export_formats: tuple[str, ...] = ()  # what `modelcycle export` writes for them ("onnx", "torchscript", "pt2")
    # the config sections (or "section.key") it reads beyond those every run reads (run, train, track,
    # tune, serve, monitor, eval): a key set in any other section is a ConfigError, not ignored
    # (registry.check_reads). Left out: data.* and model.*, what the worked example reads (docs/tasks.md)
    # and most tasks do; a task of your own that reads a built-in's section (lm, distill, reward, dpo,
    # ppo) names it here. Every built-in gives its own
    reads: tuple[str, ...] = ("data", "model")
    # the config keys that, when set, decide which model the run trains (model.init_from for the
    # language-model tasks, ppo.policy for PPO): the task's ``model`` defaults (model.name=llama) are
    # then not filled in, so config.yaml never names a model the run did not use
    model_from: tuple[str, ...] = ()
    package_task: str | None = None  # the task its packages record, when not ``name`` (distill writes classify)
    package_kind: str = ""  # "vision", "hf_sequence_classifier", "hf_causal_lm", ...: what the files are
    # the kinds of foreign folder (no modelcycle.json: a downloaded Hugging Face model, a bare peft
    # adapter) that are this task's when nothing records one
    opens_foreign: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"task name {self.name!r}: use letters, digits and underscores")
        unknown = set(self.capabilities) - CAPABILITIES
        if unknown:
            raise ValueError(f"task {self.name}: unknown capabilities {sorted(unknown)}; known: {sorted(CAPABILITIES)}")
        if self.view not in VIEWS:
            raise ValueError(f"task {self.name}: view {self.view!r} is not one of {VIEWS}")
        if self.loop is not None and not callable(self.loop):
            raise ValueError(f"task {self.name}: loop must be a class Loop(ctx, config, progress=), or None")
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))
        for name in ("serve_protocols", "export_formats", "reads", "opens_foreign", "model_from"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "defaults", _frozen(self.defaults))
        unknown = [key for key in self.reads if key not in valid_keys()]  # a str would be its letters here
        if unknown:
            raise ValueError(f"task {self.name}: reads {unknown}, which are not config keys (e.g. data, lm.tokenizer)")
        unknown = [key for key in self.model_from if key not in valid_keys()]
        if unknown:
            raise ValueError(f"task {self.name}: model_from {unknown}, which are not config keys (model.init_from)")

    @property
    def writes(self) -> str:
        """The task name its packages carry."""
        return self.package_task or self.name

    def can(self, capability: str) -> bool:
        return capability in self.capabilities
