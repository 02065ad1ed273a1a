"""The token-choice rules on plain tensors, and streamed text that never shows half a character
or the start of a stop string that generation later takes back."""

from __future__ import annotations

import pytest
import torch

from modelcycle.errors import UserError
from modelcycle.lm.sampling import Sampling, choose, penalize, top_k_top_p
from modelcycle.lm.textstream import TextStream


def test_top_k_keeps_the_k_best_and_top_p_the_smallest_set_reaching_p():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    assert torch.isfinite(top_k_top_p(logits, 2, 1.0)).tolist() == [[True, True, False, False, False]]
    # 0.5 + 0.2 = 0.7 < 0.75, so the third token is needed too
    assert torch.isfinite(top_k_top_p(logits, 0, 0.75)).tolist() == [[True, True, True, False, False]]
    assert torch.isfinite(top_k_top_p(logits, 0, 0.1)).tolist() == [[True, False, False, False, False]]


def test_repetition_penalty_lowers_seen_tokens_whatever_their_sign():
    logits = torch.tensor([[2.0, -1.0, 2.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert penalize(logits, seen, 2.0).tolist() == [[1.0, -2.0, 2.0, -1.0]]


def test_seeded_sampling_repeats_and_greedy_takes_the_argmax():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    sampling = Sampling(temperature=1.5)
    first = choose(logits, None, sampling, torch.Generator().manual_seed(7))[0]
    again = choose(logits, None, sampling, torch.Generator().manual_seed(7))[0]
    assert torch.equal(first, again)
    greedy, logprobs = choose(logits, None, Sampling(temperature=0, logprobs=True), None)
    assert torch.equal(greedy, logits.argmax(-1))
    assert torch.allclose(logprobs, logits.log_softmax(-1).max(-1).values)


@pytest.mark.parametrize(
    "field, value", [("temperature", -1.0), ("top_p", 0.0), ("top_k", -1), ("max_new_tokens", 0), ("stop", ("",))]
)
def test_bad_settings_are_user_errors_naming_the_setting(field, value):
    with pytest.raises(UserError, match=field if field != "stop" else "empty stop"):
        Sampling(**{field: value})


@pytest.fixture(scope="module")
def tokenizer():
    from tiny_lm import build_tokenizer

    return build_tokenizer()


def pieces(tokenizer, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    stream = TextStream(tokenizer, stop)
    out = []
    for token in tokenizer.encode(text):
        out.append(stream.push(token))
        if stream.stopped:
            break
    out.append(stream.finish())
    return out, stream


def test_a_character_split_over_byte_tokens_is_shown_only_when_whole(tokenizer):
    text = "caf\u00e9 \U0001f600 done"
    assert len(tokenizer.encode("\U0001f600")) > 1  # the emoji really is split into byte tokens
    out, _ = pieces(tokenizer, text)
    assert all("\ufffd" not in p for p in out)
    assert "".join(out) == text
    assert "\U0001f600" in out  # shown in one piece, once its last byte arrived


def test_a_stop_string_over_several_tokens_is_never_shown_in_part(tokenizer):
    text = "for x in items: print(x) STOPHERE and more"
    out, stream = pieces(tokenizer, text, stop=("STOPHERE",))
    assert stream.stopped
    assert "".join(out) == stream.text == "for x in items: print(x) "
    assert not any("STO" in p or p.endswith("S") for p in out)
