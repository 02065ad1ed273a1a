"""Serving protocols as units. Each module adds its routes to one app over the shared
:class:`modelcycle.serve.state.ServeState` (``add_routes(app, state, auth)``):

* ``predict_v1``: ``POST /v1/predict``, our endpoint for image and text classifiers;
* ``kserve_v2``: the Open Inference Protocol under ``/v2`` for the same classifiers;
* ``openai``: ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models/NAME`` for language models;
* ``score``: ``POST /v1/score`` for reward models.

Which protocols a package gets: what its task plugin declares (``serve_protocols``, when the
plugin has that field), else what its files hold (:func:`for_package`).
"""

from __future__ import annotations

from modelcycle.errors import UserError
from modelcycle.packages import SEQUENCE, VISION, Package

CLASSIFIER = ("predict_v1", "kserve_v2")
ORDER = ("predict_v1", "kserve_v2", "openai", "score")


def for_package(package: Package) -> tuple[str, ...]:
    """The task plugin's ``serve_protocols`` if it declares them; else by kind: image and text
    classifiers /v1/predict and v2; a one-output sequence classifier (a reward model) /v1/score;
    a causal LM or an adapter the OpenAI API."""
    declared = _declared(package)
    if declared:
        unknown = [name for name in declared if name not in ORDER]
        if unknown:
            raise UserError(f"{package.folder}: its task declares unknown serving protocols {unknown}; known: {ORDER}")
        return tuple(name for name in ORDER if name in declared)
    if package.kind == VISION:
        return CLASSIFIER
    if package.kind == SEQUENCE:
        return ("score",) if package.scores else CLASSIFIER
    return ("openai",)


def _declared(package: Package) -> tuple[str, ...]:
    if package.manifest is None:  # a foreign folder: no task recorded, its files decide
        return ()
    from modelcycle.tasks import registry

    try:
        plugin = registry.for_manifest(package.manifest)
    except UserError:  # a task no registered plugin reads: its files decide
        return ()
    return tuple(getattr(plugin, "serve_protocols", ()) or ())
