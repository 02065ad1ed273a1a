"""Serving protocols as units. Each module adds its routes to one app over the shared
:class:`modelcycle.serve.state.ServeState` (``add_routes(app, state, auth)``) and loads the
models it answers for (``load(name, path, package, cfg)``, into the state's ``HOLDS`` slot):

* ``predict_v1``: ``POST /v1/predict``, our endpoint for image and text classifiers;
* ``kserve_v2``: the Open Inference Protocol under ``/v2`` for the same classifiers;
* ``openai``: ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models/NAME`` for language models,
  with vLLM's ``/tokenizer_info``, ``/tokenize`` and ``/detokenize`` (``openai_tokens``);
* ``score``: ``POST /v1/score`` for reward models.

Which protocols a package gets (:func:`for_package`): for our packages, what its task plugin
declares (``TaskPlugin.serve_protocols``; a task that declares none cannot be served); for a
foreign folder (a downloaded Hugging Face model, a bare peft adapter), what its files hold.
"""

from __future__ import annotations

from modelcycle.errors import UserError
from modelcycle.packages import SEQUENCE, VISION, Package
from modelcycle.serve.protocols import kserve_v2, openai, predict_v1, score
from modelcycle.tasks import registry

MODULES = {module.NAME: module for module in (predict_v1, kserve_v2, openai, score)}
ORDER = tuple(MODULES)
CLASSIFIER = ("predict_v1", "kserve_v2")


def for_package(package: Package) -> tuple[str, ...]:
    """Our package: its task plugin's ``serve_protocols``. A foreign folder by its files: a text
    classifier /v1/predict and v2, a one-output sequence classifier (a reward model) /v1/score, a
    causal LM or an adapter the OpenAI API."""
    if package.manifest is None:
        if package.kind == VISION:
            return CLASSIFIER
        if package.kind == SEQUENCE:
            return ("score",) if package.scores else CLASSIFIER
        return ("openai",)
    plugin = registry.for_manifest(package.manifest)  # a task no registered plugin reads: a UserError
    if not plugin.serve_protocols:
        raise UserError(
            f"{package.folder} holds a model of task {plugin.name!r}, whose plugin names no serving protocols; "
            f"`modelcycle serve` serves a task whose TaskPlugin lists them in serve_protocols (known: "
            f"{', '.join(ORDER)}); use `modelcycle predict` or `evaluate` for it instead"
        )
    unknown = [name for name in plugin.serve_protocols if name not in MODULES]
    if unknown:
        raise UserError(
            f"{package.folder}: task {plugin.name!r} declares unknown serving protocols {unknown}; known: {ORDER}"
        )
    return tuple(name for name in ORDER if name in plugin.serve_protocols)


def task_of(package: Package) -> str | None:
    """The task /v1/models shows: the plugin's that reads our package (``classify`` for the first
    packages, which recorded none); for a foreign folder, the task that opens folders of its kind,
    None when no registered task does."""
    if package.manifest is not None:
        return registry.for_manifest(package.manifest).name
    try:
        return registry.for_kind(package.kind).name
    except UserError:
        return None
