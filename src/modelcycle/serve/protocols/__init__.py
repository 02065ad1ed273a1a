"""Serving protocols as units. Each module adds its routes to one app over the shared
:class:`modelcycle.serve.state.ServeState` (``add_routes(app, state, auth)``):

* ``predict_v1``: ``POST /v1/predict``, our endpoint for image and text classifiers;
* ``kserve_v2``: the Open Inference Protocol under ``/v2`` for the same classifiers;
* ``openai``: ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models/NAME`` for language models;
* ``score``: ``POST /v1/score`` for reward models.

Which protocols a package gets follows from what its files hold (:func:`for_package`).
"""

from __future__ import annotations

from modelcycle.packages import SEQUENCE, VISION, Package

CLASSIFIER = ("predict_v1", "kserve_v2")
ORDER = ("predict_v1", "kserve_v2", "openai", "score")


def for_package(package: Package) -> tuple[str, ...]:
    """Image classifiers and text classifiers: /v1/predict and v2; a one-output sequence
    classifier (a reward model): /v1/score; a causal LM or an adapter: the OpenAI API."""
    if package.kind == VISION:
        return CLASSIFIER
    if package.kind == SEQUENCE:
        return ("score",) if package.scores else CLASSIFIER
    return ("openai",)
