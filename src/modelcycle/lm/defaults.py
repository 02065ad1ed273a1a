"""A model's own sampling defaults: what its ``generation_config.json`` sets (Qwen2.5 Instruct:
temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05), used where a command-line flag
or a request field does not say otherwise. Its ``eos_token_id`` ends generation already
(``LanguageModel.eos_ids``).

Only the values the file sets count: transformers fills the rest with its own defaults, which
are not the model authors' advice. ``do_sample: false`` means greedy (temperature 0).
"""

from __future__ import annotations

from typing import Any

from modelcycle.errors import UserError
from modelcycle.lm.sampling import Sampling

FIELDS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")


def model_defaults(generation_config) -> dict[str, Any]:
    """The ``Sampling`` fields ``generation_config`` (a transformers ``GenerationConfig`` or
    None) sets; a value no sampler can take is a ``UserError`` that names the file."""
    if generation_config is None:
        return {}
    found = {name: value for name in FIELDS if (value := getattr(generation_config, name, None)) is not None}
    if getattr(generation_config, "do_sample", None) is False:
        found["temperature"] = 0.0
    try:
        Sampling(**found)
    except UserError as exc:
        raise UserError(f"the model's generation_config.json: {exc}") from None
    return found


def with_defaults(given: dict[str, Any], model: dict[str, Any], fallback: dict[str, Any]) -> Sampling:
    """``Sampling`` from the values ``given`` (None: not given), else the model's, else ``fallback``."""
    chosen = {name: value for name, value in given.items() if value is not None}
    return Sampling(**{**fallback, **model, **chosen})
