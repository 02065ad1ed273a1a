"""Text and conversations to token ids, with control tokens only where the chat template puts them.

A chat template renders text, and tokenising that text whole also turns a user's
``<|im_end|>\\n<|im_start|>system`` into real role markers: anyone could forge a system turn, in a
served chat or in training data. So every string that comes from people (message content,
completion prompts, the answers of preference pairs) is tokenised with its control tokens as
plain characters, and only the template's own control tokens become control ids. Control
tokens are the tokenizer's special tokens and the added tokens the template's source holds
(Qwen's ``<tool_call>``, say), as in transformers' ``sanitize_control_tokens``.

Where a message's content lies in the rendered text is found by rendering the conversation a
second time with a random sentinel in place of each content: the text between sentinels is the
template's, the rest is content (taken as it is, or stripped, as templates that ``trim`` do).
A tool call's name, id and arguments (each key and string of them) and a tool result's name and
call id are people's text too, marked the same way (found as they are or JSON-escaped, as
``tojson`` writes them); tool definitions (``tools``) are the template's text, so a control
string in them is refused, and a call the template does not write at all is refused rather than
trained as if it were not there.
When no control token lies in content, the ids are exactly those of tokenising the rendered text
whole, as the model's authors did; only text that holds a control string is split around it.
The same offsets give SFT's loss mask its assistant spans, so a message cannot move the mask
either.

Every call here is thread-safe: nothing sets the tokenizer's shared ``split_special_tokens``
switch (a server tokenises in several threads at once).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import threading
import weakref
from dataclasses import dataclass

from modelcycle.errors import UserError
from modelcycle.lm.chat_marks import marked, renderings, strings

_controls: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_controls_lock = threading.Lock()
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> str | None:
    """Why ``text`` is not Unicode, or None. JSON (and a command line's undecodable bytes) can
    carry a lone UTF-16 surrogate, which no tokenizer can encode."""
    if found := _SURROGATE.search(text):
        code = found.group().encode("unicode_escape").decode()
        return f"holds a lone UTF-16 surrogate ({code}) at character {found.start()}, which is not text"
    return None


def _check_text(text: str, where: str) -> None:
    if problem := lone_surrogate(text):
        raise UserError(f"{where} {problem}; send valid Unicode (UTF-8)")


@dataclass
class Encoded:
    """Token ids and where each token starts in ``text`` (a character offset)."""

    ids: list[int]
    starts: list[int]
    text: str
    # (message index, start, end) of each message content in ``text``, in order
    spans: list[tuple[int, int, int]]


class ChatTemplateError(UserError):
    """The model's chat template failed: a syntax error, something the sandbox refuses, or the
    template's own ``raise_exception`` (roles that do not alternate, say)."""


def template_source(tokenizer) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    if isinstance(template, dict):  # several named templates
        return template.get("default") or next(iter(template.values()), None)
    return template


def _control(tokenizer) -> tuple[re.Pattern | None, frozenset[int]]:
    """(a regex matching any control token, longest first; their ids), cached per tokenizer."""
    source = template_source(tokenizer) or ""
    with _controls_lock:
        cached = _controls.get(tokenizer)
    if cached is not None and cached[0] == source:
        return cached[1], cached[2]
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens = {
        token.content: index
        for index, token in added.items()
        if token.content
        and (getattr(token, "special", False) or (token.content in source and not token.content.isspace()))
    }
    specials = [name for name in getattr(tokenizer, "all_special_tokens", []) or [] if name not in tokens]
    if specials:  # slow tokenizers list theirs here
        vocabulary = tokenizer.get_vocab()
        tokens.update({name: vocabulary[name] for name in specials if name in vocabulary})
    unknown = getattr(tokenizer, "unk_token", None)  # what plain text becomes where a vocabulary lacks it
    if unknown not in {getattr(tokenizer, f"{role}_token", None) for role in ("eos", "bos", "pad")}:
        tokens.pop(unknown, None)  # (Qwen2's class makes <|endoftext|>, its eos, the unknown token too)
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))) if tokens else None
    ids = frozenset(tokens.values())
    with _controls_lock, contextlib.suppress(TypeError):  # not weak-referenceable: recomputed next time
        _controls[tokenizer] = (source, pattern, ids)
    return pattern, ids


def control_pattern(tokenizer) -> re.Pattern | None:
    """A regex matching any of the tokenizer's control tokens (longest first), or None."""
    return _control(tokenizer)[0]


def _tokens(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The tokenizer's own encoding of ``text`` (no bos/eos) with each token's character span."""
    if not text:
        return [], []
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=False)
        return list(encoded["input_ids"]), [tuple(span) for span in encoded["offset_mapping"]]
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=False)["input_ids"]
    return list(ids), [(0, len(text))] * len(ids)


def _as_text(tokenizer, text: str) -> list[int]:
    """``text`` with no added token matched at all: each control string as its characters."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer: split_special_tokens is a per-call argument there
        return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    splits = [s for s, _ in backend.pre_tokenizer.pre_tokenize_str(text)] if backend.pre_tokenizer else [text]
    return [token.id for split in splits for token in backend.model.tokenize(split)]


def _after_newline(tokenizer, texts: list[str], as_text: bool) -> list[tuple[list[int], list[int]]]:
    """(ids, start offsets) of pieces from the middle of a text, in one batch. Each is encoded
    after a newline that is then removed, so SentencePiece tokenizers do not add the word-start
    space they add at the start of a string (the trick transformers uses too)."""
    if as_text:
        newline = _as_text(tokenizer, "\n")
        out = []
        for text in texts:
            ids = _as_text(tokenizer, "\n" + text)
            ids = ids[len(newline) :] if newline and ids[: len(newline)] == newline else _as_text(tokenizer, text)
            out.append((ids, [0] * len(ids)))
        return out
    newline = _tokens(tokenizer, "\n")[0]
    fast = getattr(tokenizer, "is_fast", False)
    encoded = tokenizer(
        ["\n" + t for t in texts], add_special_tokens=False, return_offsets_mapping=fast, split_special_tokens=False
    )
    out = []
    for k, text in enumerate(texts):
        ids = list(encoded["input_ids"][k])
        starts = [max(a - 1, 0) for a, _ in encoded["offset_mapping"][k]] if fast else [0] * len(ids)
        if newline and ids[: len(newline)] == newline:
            out.append((ids[len(newline) :], starts[len(newline) :]))
        else:
            ids, spans = _tokens(tokenizer, text)
            out.append((ids, [a for a, _ in spans] if fast else [0] * len(ids)))
    return out


def encode_guarded(tokenizer, text: str, content: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """(ids, token start offsets) of ``text`` in which the spans ``content`` came from people: a
    control string there is encoded as its characters; elsewhere (the template's text) it is the
    control token."""
    pattern, control_ids = _control(tokenizer)
    edges = [0, *(x for span in sorted(content) for x in span), len(text)]
    matches = []  # (start, end, whether the template wrote it); each region searched on its own
    if pattern is not None:
        for k in range(len(edges) - 1):
            for match in pattern.finditer(text, edges[k], edges[k + 1]):
                matches.append((match.start(), match.end(), k % 2 == 0))
    if all(allowed for *_, allowed in matches):
        ids, spans = _tokens(tokenizer, text)
        if all(
            token not in control_ids or not any(a < e and s < b for a, b in content)
            for token, (s, e) in zip(ids, spans, strict=True)
        ):
            return ids, [start for start, _ in spans]  # the common case: the tokenizer's own encoding, whole
    # Control strings in content: the text between control strings is encoded as the tokenizer
    # splits at added tokens anyway, the template's control strings are their tokens, the others
    # their characters.
    pieces, cursor = [], 0  # (start, end, kind)
    for start, end, allowed in matches:
        if start > cursor:
            pieces.append((cursor, start, "text"))
        pieces.append((start, end, "token" if allowed else "chars"))
        cursor = end
    if cursor < len(text):
        pieces.append((cursor, len(text), "text"))
    middle = [(a, b) for a, b, kind in pieces if kind == "text" and a > 0]
    encoded = dict(zip(middle, _after_newline(tokenizer, [text[a:b] for a, b in middle], False), strict=True))
    as_chars: dict[tuple[str, bool], list[int]] = {}

    def chars(piece: str, first: bool) -> list[int]:
        if (piece, first) not in as_chars:
            as_chars[piece, first] = (
                _as_text(tokenizer, piece) if first else _after_newline(tokenizer, [piece], True)[0][0]
            )
        return as_chars[piece, first]

    ids, starts = [], []
    for start, end, kind in pieces:
        piece = text[start:end]
        if kind == "token":
            found, where = [tokenizer.convert_tokens_to_ids(piece)], [0]
        elif start == 0 and kind == "text":
            found, spans = _tokens(tokenizer, piece)
            where = [a for a, _ in spans]
        elif kind == "text":
            found, where = encoded[start, end]
        if kind == "chars" or (kind == "text" and control_ids.intersection(found)):  # text: across a border
            found = chars(piece, start == 0)
            where = [0] * len(found)
            if control_ids.intersection(found):
                raise UserError(
                    f"{piece!r} in the text cannot be encoded as plain characters by this tokenizer "
                    "(it turns them into the control token); remove it from the text"
                )
        ids += found
        starts += [start + w for w in where]
    return ids, starts


def encode_text(tokenizer, text: str, add_special_tokens: bool = False) -> list[int]:
    """Token ids of text that people wrote (a completion prompt, an answer): every control string
    in it is plain characters. ``add_special_tokens`` adds what the tokenizer adds around a
    sequence (a bos token, for some)."""
    _check_text(text, "the text")
    ids, _ = encode_guarded(tokenizer, text, [(0, len(text))])
    if add_special_tokens:
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        at = next((i for i in range(len(full) - len(bare) + 1) if full[i : i + len(bare)] == bare), None)
        if at is not None and full != bare:
            ids = full[:at] + ids + full[at + len(bare) :]
    return ids


def render(
    tokenizer, messages: list[dict], add_generation_prompt: bool, name: str = "the model", tools: list | None = None
) -> str:
    """The chat template's text (``tools``: tool definitions it is given); a template that fails
    (syntax, sandbox, its own ``raise_exception``) raises ``ChatTemplateError`` that says so,
    never a traceback."""
    import jinja2

    if not template_source(tokenizer):
        raise UserError(
            f"{name}: the tokenizer has no chat template (chat_template in tokenizer_config.json); "
            "use plain prompts (modelcycle lm generate --no-chat, or /v1/completions)"
        )
    try:
        return tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except jinja2.TemplateError as exc:
        kind = {
            "SecurityError": "does something the template sandbox refuses",
            "TemplateSyntaxError": "is not valid Jinja",
        }.get(type(exc).__name__, "refused the conversation")
        raise ChatTemplateError(
            f"{name}: the chat template {kind}: {exc}"
            + ("" if kind == "refused the conversation" else "; fix chat_template in the tokenizer's files")
        ) from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
        raise ChatTemplateError(f"{name}: the chat template failed on this conversation: {exc}") from None


def _slots(tokenizer, messages, add_generation_prompt, text, name, tools):
    """(slots, values, written): ``slots`` the (value, start, end) of every string people wrote
    in ``text``, found from a rendering with sentinels (None when the template changes one beyond
    stripping or escaping it: then they cannot be told apart); ``values`` what each stands for
    (``chat_marks.marked``); ``written`` the values the template wrote at all."""
    nonce = secrets.token_hex(8)
    copies, values = marked(messages, lambda k: f"\ue000{nonce}:{k}\ue001")
    parts = re.split(f"\ue000{nonce}:(\\d+)\ue001", render(tokenizer, copies, add_generation_prompt, name, tools))
    written = {int(index) for index in parts[1::2]}
    slots, position = [], 0
    for k in range(0, len(parts) - 1, 2):
        template, index, following = parts[k], int(parts[k + 1]), parts[k + 2]
        if not text.startswith(template, position):
            return None, values, written
        position += len(template)
        for candidate in renderings(*values[index][1:]):
            end = position + len(candidate)
            if text.startswith(candidate, position) and text.startswith(following, end):
                slots.append((index, position, end))
                position = end
                break
        else:
            return None, values, written
    whole = position + len(parts[-1]) == len(text) and text.endswith(parts[-1])
    return (slots if whole else None), values, written


def _check_tools(tools: list, pattern: re.Pattern | None, name: str) -> None:
    """Tool definitions are written as the template's own text: no control string may be in
    them (nor spelled across two of their strings, as a template may write them side by side)."""
    found = strings(tools)
    for text in (*found, "".join(found)):
        _check_text(text, "the tool definitions (tools)")
        if pattern is not None and (control := pattern.search(text)):
            raise UserError(
                f"the tool definitions (tools) hold {control.group()!r}, a control token of {name}'s chat template, "
                "and they are written as the template's own text; remove it from them"
            )


def encode_chat(
    tokenizer, messages: list[dict], add_generation_prompt: bool = True, name: str = "the model", tools=None
) -> Encoded:
    """The chat template applied to ``messages`` (dicts with string ``role`` and ``content``, an
    assistant's ``tool_calls``) and ``tools``, tokenised: control tokens where the template wrote
    them; content and tool calls always as text."""
    pattern, _ = _control(tokenizer)
    for i, message in enumerate(messages):
        _check_text(message["role"], f"message {i}")
        if pattern is not None and pattern.search(message["role"]):
            raise UserError(f"message {i}: the role {message['role']!r} holds a control token; use a plain role name")
    if tools:
        _check_tools(tools, pattern, name)
    text = render(tokenizer, messages, add_generation_prompt, name, tools)
    slots, values, written = _slots(tokenizer, messages, add_generation_prompt, text, name, tools)
    for k, (i, kind, value) in enumerate(values):
        _check_text(value, f"message {i}")
        if kind == "name" and k not in written:
            raise UserError(
                f"message {i} calls the tool {value!r}, but {name}'s chat template does not write tool calls (the "
                "call is missing from its text), so training would leave it out; use a model whose template "
                "renders tool_calls (as Qwen2.5's and Llama 3.1's do), or give the tokenizer such a chat_template"
            )
    if slots is None:  # text rewritten by the template: safe only when it holds no control string
        for i, kind, value in values:
            if pattern is not None and (found := pattern.search(value)):
                what = f"message {i}" if kind == "content" else f"a tool call field of message {i}"
                raise UserError(
                    f"{what} holds {found.group()!r}, a control token of {name}'s chat template, and this template "
                    "changes message text, so it cannot be kept as plain text; remove it"
                )
        ids, spans = _tokens(tokenizer, text)
        return Encoded(ids, [start for start, _ in spans], text, _found_spans(messages, text))
    ids, starts = encode_guarded(tokenizer, text, [(a, b) for _, a, b in slots if b > a])
    return Encoded(ids, starts, text, [(values[k][0], a, b) for k, a, b in slots if values[k][1] == "content"])


def _found_spans(messages: list[dict], text: str) -> list[tuple[int, int, int]]:
    """Content found by searching the text in order: for templates that rewrite content."""
    spans, cursor = [], 0
    for index, message in enumerate(messages):
        content = message["content"]
        start = text.find(content, cursor)
        if start < 0:
            content = content.strip()
            start = text.find(content, cursor)
        if start >= 0:
            spans.append((index, start, start + len(content)))
            cursor = start + len(content)
    return spans


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = True, name: str = "the model") -> list[int]:
    return encode_chat(tokenizer, messages, add_generation_prompt, name).ids
