"""Where an assistant's turn ends: the token the model is trained to close each answer with
(inside SFT's loss mask, after each DPO/reward answer) and stops generating at.

It is read from the model's own chat template, never assumed to be ``eos_token``: a base model
such as Qwen2's closes turns with ``<|im_end|>`` while its ``eos_token`` is ``<|endoftext|>``, and a
model that trained on the one but stops on the other runs to its length limit. The template is
rendered (sandboxed, ``lm/chat_template.render``) on a probe conversation with a random answer,
and the first control token after the answer (whitespace allowed before it) is the end of turn.

- ``lm.end_of_turn`` (one token of the vocabulary) overrides what the template says.
- A template that writes no control token after an answer: answers end with ``eos_token``,
  inserted after each answer in training data (the rendered text lacks it).
- A tokenizer with no template at all gets :func:`default_chat_template` where a run needs one
  (SFT, DPO): ChatML where the vocabulary has ``<|im_start|>``/``<|im_end|>``, else plain role
  headers with each turn closed by ``eos_token``.

Generation stops at the end of turn, at ``eos_token`` and at the ids of the folder's
``generation_config.json`` ``eos_token_id`` (:func:`end_of_turn_ids`).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import weakref
from dataclasses import dataclass

from modelcycle.errors import ConfigError, UserError
from modelcycle.lm.chat_template import ChatTemplateError, control_pattern, render, template_source
from modelcycle.lm.tokenizer import CHAT_TEMPLATE, IM_END, IM_START

# For a tokenizer without a chat template and without ChatML's tokens: role headers as plain text
# (so a message can imitate one, but never the end of a turn, which is eos_token, a control token)
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ':\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:\n' }}{% endif %}"
)
TEMPLATE, OVERRIDE, EOS = "the chat template", "lm.end_of_turn", "eos_token"  # where a TurnEnd comes from

_found: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_found_lock = threading.Lock()


@dataclass(frozen=True)
class TurnEnd:
    """The token that closes an assistant turn, its id, where it was found (``TEMPLATE``,
    ``OVERRIDE`` or ``EOS``), and whether the template writes it after an answer (else it is
    inserted there in training data)."""

    token: str
    id: int
    source: str
    in_template: bool

    def record(self) -> dict:
        """For the package's ``modelcycle.json``."""
        return {"token": self.token, "id": self.id, "from": self.source}

    def note(self, tokenizer, name: str = "the model") -> str | None:
        """A line for events.log and the terminal when the turn end is not simply ``eos_token``."""
        eos = tokenizer.eos_token
        where = f"{name}: answers end with {self.token} (id {self.id}, from {self.source})"
        if not self.in_template:
            return (
                f"{where}; the chat template writes no end-of-turn token after an answer, so {self.token} is "
                "inserted after each answer in the training data (set lm.end_of_turn to choose another token)"
            )
        if self.token != eos:
            return (
                f"{where}, not eos_token {eos}: it is trained after each answer and generation stops at it and at {eos}"
            )
        return None


def _single_token(tokenizer, token: str) -> int | None:
    found = tokenizer.get_vocab().get(token)  # the vocabulary, not convert_tokens_to_ids: no unknown-token id
    return int(found) if found is not None else None


def template_turn_end(tokenizer, name: str = "the model") -> str | None:
    """The control token the chat template writes right after an assistant's answer, or None when
    it writes none (or the tokenizer has no template). A template that fails raises
    ``ChatTemplateError``."""
    if not template_source(tokenizer):
        return None
    nonce = secrets.token_hex(8)
    answer = f"answer{nonce}"
    probe = [{"role": "user", "content": f"question{nonce}"}, {"role": "assistant", "content": answer}]
    text = render(tokenizer, probe, add_generation_prompt=False, name=name)
    at = text.rfind(answer)
    pattern = control_pattern(tokenizer)
    if at < 0 or pattern is None:
        return None
    found = pattern.match(text[at + len(answer) :].lstrip())
    return found.group() if found else None


def turn_end(
    tokenizer, override: str | None = None, name: str = "the model", setting: str = "lm.end_of_turn"
) -> TurnEnd | None:
    """What closes an assistant turn: ``override`` (``lm.end_of_turn``, or what a package records
    as ``setting``; a ConfigError when it is not one token of the vocabulary), else the template's
    end of turn, else ``eos_token``; None when there is none of these. Cached per tokenizer and
    template."""
    key = (template_source(tokenizer), override)
    with _found_lock:
        cached = _found.get(tokenizer, {})
    if key in cached:
        return cached[key]
    try:
        written = template_turn_end(tokenizer, name)
    except ChatTemplateError:
        if override is None:
            raise
        written = None  # the override decides; a chat with this template fails with its own error
    if written is not None and _single_token(tokenizer, written) is None:
        written = None  # a control string that is no vocabulary entry (cannot happen with transformers)
    if override is not None:
        index = _single_token(tokenizer, override)
        if index is None:
            specials = ", ".join(getattr(tokenizer, "all_special_tokens", []) or []) or "none"
            raise ConfigError(
                f"{setting}={override!r} is not a single token in the vocabulary of {name}, so it cannot "
                f"end a turn; use one of its special tokens ({specials}), or leave it unset to take the chat "
                "template's"
            )
        found = TurnEnd(override, index, OVERRIDE, written == override)
    elif written is not None:
        found = TurnEnd(written, _single_token(tokenizer, written), TEMPLATE, True)
    elif tokenizer.eos_token is not None and tokenizer.eos_token_id is not None:
        found = TurnEnd(tokenizer.eos_token, int(tokenizer.eos_token_id), EOS, not template_source(tokenizer))
    else:
        found = None
    with _found_lock, contextlib.suppress(TypeError):  # not weak-referenceable: found again next time
        _found.setdefault(tokenizer, {})[key] = found
    return found


def default_chat_template(tokenizer) -> str:
    """The template for a tokenizer that has none: ChatML (``<|im_start|>role\\n...<|im_end|>\\n``)
    where the vocabulary has both ChatML tokens, else role headers as text (``user:\\n...``) with
    each turn closed by ``eos_token``."""
    vocabulary = tokenizer.get_vocab()
    if IM_START in vocabulary and IM_END in vocabulary:
        return CHAT_TEMPLATE
    if tokenizer.eos_token is None:
        raise UserError(
            "the tokenizer has neither a chat template nor an eos_token, so a chat answer could not end; "
            "set chat_template (and eos_token) in its tokenizer_config.json"
        )
    return PLAIN_CHAT_TEMPLATE


def give_default_template(tokenizer, name: str = "the model") -> str | None:
    """Set :func:`default_chat_template` on a tokenizer without a template (it is saved with the
    package, so whatever serves the model renders chats the same way); returns a note saying so,
    or None when the tokenizer has a template."""
    if template_source(tokenizer):
        return None
    tokenizer.chat_template = default_chat_template(tokenizer)
    kind = (
        "ChatML" if tokenizer.chat_template == CHAT_TEMPLATE else f"role headers, turns closed by {tokenizer.eos_token}"
    )
    return f"{name}'s tokenizer has no chat template: using the default ({kind}; docs/lm.md), saved with the package"


def end_of_turn_ids(
    tokenizer, generation_config=None, override: str | None = None, setting: str = "lm.end_of_turn"
) -> list[int]:
    """Every token that ends an answer: the end of turn (``override`` or the chat template's), the
    tokenizer's eos and the generation config's eos ids; never hard-coded ids. A chat template
    that fails adds nothing here (a chat with it fails, with the template's error)."""
    try:
        closing = turn_end(tokenizer, override, setting=setting)
    except ChatTemplateError:
        closing = None
    configured = getattr(generation_config, "eos_token_id", None)
    ids = [
        closing.id if closing else None,
        tokenizer.eos_token_id,
        *(configured if isinstance(configured, list) else [configured]),
    ]
    found = list(dict.fromkeys(int(i) for i in ids if i is not None))
    if not found:
        raise UserError(
            "the tokenizer has no eos_token, its chat template no end-of-turn token and generation_config.json "
            "no eos_token_id, so generation could only end at the token limit; set eos_token in tokenizer_config.json"
        )
    return found


def stop_at(generation_config, token_id: int) -> None:
    """``token_id`` joins ``generation_config.eos_token_id`` (first), so ``transformers``' own
    ``generate`` stops there too."""
    if generation_config is None:
        return
    current = generation_config.eos_token_id
    current = list(current) if isinstance(current, list) else [] if current is None else [current]
    if token_id not in current:
        generation_config.eos_token_id = [token_id, *current]


def package_record(manifest: dict | None, tokenizer) -> dict | None:
    """The ``end_of_turn`` entry of a package made from another (a merge, a PPO policy): what
    ``manifest`` records, else (a plain folder or a bare adapter) what the tokenizer's chat
    template says; None when neither says (a template that fails: a chat with it fails later)."""
    recorded = (manifest or {}).get("end_of_turn")
    if isinstance(recorded, dict):
        return recorded
    try:
        found = turn_end(tokenizer)
    except ChatTemplateError:
        return None
    return found.record() if found else None


def inherited_override(manifest: dict | None) -> str | None:
    """The ``lm.end_of_turn`` a run started from this package inherits: the token its run chose by
    that setting (a template's own turn end is found again from the template, so None then)."""
    recorded = (manifest or {}).get("end_of_turn")
    if isinstance(recorded, dict) and recorded.get("from") == OVERRIDE:
        return recorded.get("token")
    return None


def recorded_end_of_turn(manifest: dict | None) -> str | None:
    """The end-of-turn token a package's ``modelcycle.json`` records (its run's ``lm.end_of_turn``
    or what its chat template said), or None."""
    recorded = (manifest or {}).get("end_of_turn")
    return recorded.get("token") if isinstance(recorded, dict) else None
