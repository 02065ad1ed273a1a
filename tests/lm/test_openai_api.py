"""Issue 16, item 6, with the official ``openai`` client against a real ``modelcycle serve`` on
127.0.0.1: log-probabilities equal the model's own (a direct forward pass), echo, n, seeds,
stop strings and penalties; JSON mode and tools are 400s that say so; 16 concurrent streams get
the text each gets alone (the continuous batch), and the metrics show it."""

from __future__ import annotations

import re
import threading

import httpx
import openai
import pytest
import torch

from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling
from modelcycle.serve.process import ServerProcess

MODEL = "tiny-chat"
MESSAGES = [{"role": "user", "content": "Explain the for statement"}]
PROMPTS = ["def f(", "The with statement", "class A:", "import os", "for x in y:", "while True:", "Hello", "x = 1 +"]


@pytest.fixture(scope="module")
def lm(tiny_lm_run):
    return load_lm(tiny_lm_run, device="cpu")


@pytest.fixture(scope="module")
def server(tiny_lm_run):
    with ServerProcess([tiny_lm_run], "serve.max_new_tokens=48", env={"OMP_NUM_THREADS": "1"}) as process:
        yield process


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def direct_logprobs(lm, ids: list[int]) -> torch.Tensor:
    """log-softmax of the model's logits at every position of ``ids``, by hand."""
    with torch.no_grad():
        return lm.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_chat_logprobs_are_the_models_log_softmax_for_the_greedy_tokens(client, lm):
    answer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0, logprobs=True, top_logprobs=3
    )
    prompt = lm.chat_ids(MESSAGES)
    want = lm.generate([prompt], Sampling(temperature=0, max_new_tokens=8))[0]
    content = answer.choices[0].logprobs.content
    shown = [t for t in want.token_ids if t not in lm.eos_ids]
    assert len(content) == len(shown)
    table = direct_logprobs(lm, prompt + want.token_ids)
    for step, (entry, token) in enumerate(zip(content, shown, strict=True)):
        row = table[len(prompt) - 1 + step]
        assert entry.logprob == pytest.approx(float(row[token]), abs=1e-4)
        assert entry.token == lm.tokenizer.decode([token]) and entry.bytes == list(entry.token.encode())
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the likeliest
    assert "".join(e.token for e in content) == answer.choices[0].message.content


def test_completions_echo_the_prompt_with_its_logprobs(client, lm):
    answer = client.completions.create(model=MODEL, prompt="def f(", max_tokens=4, temperature=0, echo=True, logprobs=2)
    want = lm.generate(["def f("], Sampling(temperature=0, max_new_tokens=4))[0]
    [choice] = answer.choices
    assert choice.text == "def f(" + want.text
    prompt = lm.encode("def f(")
    scores = choice.logprobs
    assert len(scores.tokens) == len(prompt) + len(want.token_ids)  # a stop token has its entry, not its text
    assert scores.token_logprobs[0] is None and scores.top_logprobs[0] is None
    table = direct_logprobs(lm, prompt + want.token_ids)
    ids = prompt + want.token_ids
    for i in range(1, len(scores.tokens)):
        assert scores.token_logprobs[i] == pytest.approx(float(table[i - 1, ids[i]]), abs=1e-4)
        assert len(scores.top_logprobs[i]) <= 2
    assert scores.text_offset[:2] == [0, len(scores.tokens[0])]
    # max_tokens 0 with echo: the prompt scored, nothing generated (as evaluation harnesses ask)
    scored = client.completions.create(model=MODEL, prompt="def f(", max_tokens=0, echo=True, logprobs=0)
    assert scored.choices[0].text == "def f(" and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.token_logprobs[1:] == pytest.approx(scores.token_logprobs[1 : len(prompt)])


def harness_request(prompt) -> dict:
    """What lm-evaluation-harness' local-completions sends to score a continuation (its default
    ``tokenized_requests``: token ids, tokenised with the model's own tokenizer)."""
    return {
        "model": MODEL,
        "prompt": prompt,
        "temperature": 0,
        "max_tokens": 1,
        "logprobs": 1,
        "seed": 1234,
        "echo": True,
    }


def test_token_id_prompts_score_continuations_as_evaluation_harnesses_read_them(server, client, lm):
    context, continuation = lm.encode("The with statement"), lm.encode(" opens a file", special_tokens=False)
    other = lm.encode("class A:")
    body = httpx.post(
        server.url + "/v1/completions", json=harness_request([context + continuation, other]), timeout=120
    )
    assert body.status_code == 200, body.text
    choices = sorted(body.json()["choices"], key=lambda c: c["index"])
    for ids, ctxlen, answer in ((context + continuation, len(context), choices[0]), (other, 1, choices[1])):
        scores = answer["logprobs"]
        assert len(scores["token_logprobs"]) == len(ids) + 1  # the prompt, then the one generated token
        assert answer["text"].startswith(lm.tokenizer.decode(ids))
        # the harness' reading: the continuation's log-likelihood and whether greedy decoding gives it
        table = direct_logprobs(lm, ids)
        want = sum(float(table[i - 1, ids[i]]) for i in range(ctxlen, len(ids)))
        assert sum(scores["token_logprobs"][ctxlen:-1]) == pytest.approx(want, abs=1e-3)
        greedy = all(int(table[i - 1].argmax()) == ids[i] for i in range(ctxlen, len(ids)))
        read = zip(scores["token_logprobs"][ctxlen:-1], scores["top_logprobs"][ctxlen:-1], strict=True)
        assert all(logprob == max(top.values()) for logprob, top in read) == greedy
    # one prompt of ids through the openai client answers as the same ids do in the model
    made = client.completions.create(model=MODEL, prompt=other, max_tokens=6, temperature=0)
    assert made.choices[0].text == lm.generate([other], Sampling(temperature=0, max_new_tokens=6))[0].text


def prompt_whose_next_token_stops(lm) -> list[int]:
    """Two token ids after which the model's greedy choice is a stop token: found by trying them
    all at once (the tiny model's weights are fixed, so this is the same pair every run)."""
    vocab = len(lm.tokenizer)
    with torch.no_grad():
        for first in (i for i in range(vocab) if i not in lm.eos_ids):
            pairs = torch.stack([torch.full((vocab,), first), torch.arange(vocab)], 1)
            hits = [i for i, n in enumerate(lm.model(pairs).logits[:, -1].argmax(-1).tolist()) if n in lm.eos_ids]
            if hits:
                return [first, hits[0]]
    raise AssertionError("no two-token prompt of the tiny model is followed by a stop token")


def test_echo_has_an_entry_for_the_generated_token_even_when_it_is_the_stop_token(server, lm):
    ids = prompt_whose_next_token_stops(lm)
    body = httpx.post(server.url + "/v1/completions", json=harness_request(ids), timeout=120).json()
    [answer] = body["choices"]
    assert answer["finish_reason"] == "stop" and body["usage"]["completion_tokens"] == 1
    assert len(answer["logprobs"]["token_logprobs"]) == len(ids) + 1
    stop = int(direct_logprobs(lm, ids)[-1].argmax())
    assert answer["logprobs"]["tokens"][-1] == lm.tokenizer.decode([stop])
    assert answer["text"] == lm.tokenizer.decode(ids)  # the stop token is no part of the text


@pytest.mark.parametrize(
    "prompt, fragment",
    [([[1, 100_000]], "token id 100000"), ([[-1]], "greater than or equal to 0"), ([[]], "prompt"), ([], "empty list")],
)
def test_bad_token_id_prompts_are_400s(server, prompt, fragment):
    reply = httpx.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 1})
    assert reply.status_code == 400 and fragment in reply.json()["error"]["message"], reply.text


def test_the_tokenizer_routes_answer_as_vllm_s_so_a_harness_needs_no_tokenizer(server, lm):
    tokenizer = lm.tokenizer
    # the harness' probe (check_remote_tokenizer_support): tokenizer_info with eos_token, tokenize with tokens
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == tokenizer.eos_token and info["chat_template"] == tokenizer.chat_template
    assert info["model_max_length"] == lm.context_length and info["vocab_size"] == len(tokenizer)
    said = httpx.post(server.url + "/tokenize", json={"prompt": "def f(", "add_special_tokens": False}).json()
    assert said["tokens"] == tokenizer("def f(", add_special_tokens=False).input_ids and said["count"] > 0
    # the harness finds the eos id by tokenising eos_token
    eos = httpx.post(server.url + "/tokenize", json={"prompt": info["eos_token"], "add_special_tokens": False})
    assert eos.json()["tokens"] == [tokenizer.eos_token_id]
    ids = lm.encode("class A:")
    back = httpx.post(server.url + "/detokenize", json={"model": MODEL, "tokens": ids}).json()
    assert back == {"prompt": tokenizer.decode(ids)}
    # what it does not do is a 400 in OpenAI's shape, naming the field
    for path, body, param in [
        ("/tokenize", {"messages": [{"role": "user", "content": "hi"}]}, "messages"),
        ("/detokenize", {"tokens": [1, 100_000]}, "tokens"),
        ("/tokenize", {"prompt": "x", "model": "nobody"}, None),
    ]:
        reply = httpx.post(server.url + path, json=body)
        assert reply.status_code in (400, 404) and "error" in reply.json(), reply.text
        error = reply.json()["error"]
        assert param is None or param == error["param"] or param in error["message"], error


def test_n_choices_and_seeds(client, lm):
    kwargs = {"model": MODEL, "messages": MESSAGES, "max_tokens": 12, "temperature": 1.0, "seed": 7}
    first = client.chat.completions.create(n=3, **kwargs)
    again = client.chat.completions.create(n=3, **kwargs)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]  # the same seed, the same answers
    assert len(set(texts)) > 1  # each choice samples with its own seed
    alone = lm.generate([lm.chat_ids(MESSAGES)], Sampling(temperature=1.0, max_new_tokens=12, seed=7))[0]
    assert texts[0] == alone.text  # choice 0 is what the seed gives alone
    assert first.usage.prompt_tokens == len(lm.chat_ids(MESSAGES))  # the prompt counted once
    other = client.chat.completions.create(**{**kwargs, "seed": 8})
    assert other.choices[0].message.content != texts[0]
    listed = client.completions.create(model=MODEL, prompt=["def f(", "x"], n=2, max_tokens=4, temperature=0)
    assert [c.index for c in listed.choices] == [0, 1, 2, 3]
    assert listed.choices[0].text == listed.choices[1].text != listed.choices[2].text


def test_stop_strings_and_penalties_change_the_answer_as_asked(client, lm):
    free = client.completions.create(model=MODEL, prompt="def f(", max_tokens=12, temperature=0).choices[0].text
    stop = free[4:6]
    cut = client.completions.create(model=MODEL, prompt="def f(", max_tokens=12, temperature=0, stop=[stop, "zzz"])
    assert cut.choices[0].text == free[: free.index(stop)] and cut.choices[0].finish_reason == "stop"
    penalized = client.completions.create(
        model=MODEL, prompt="def f(", max_tokens=12, temperature=0, frequency_penalty=2.0, presence_penalty=2.0
    )
    want = lm.generate(
        ["def f("], Sampling(temperature=0, max_new_tokens=12, frequency_penalty=2.0, presence_penalty=2.0)
    )[0]
    assert penalized.choices[0].text == want.text


@pytest.mark.parametrize(
    "extra, param, fragment",
    [
        ({"response_format": {"type": "json_object"}}, "response_format", "not constrained to JSON"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format", "JSON"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools", "function calling"),
        ({"tool_choice": "required"}, "tool_choice", "function calling"),
        ({"logit_bias": {"5": 10}}, "logit_bias", "logit_bias"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "serve.max_top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs", "needs logprobs"),
        ({"n": 9}, "n", "serve.max_n"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "serve.max_stop"),
    ],
)
def test_what_the_server_does_not_do_is_a_400_that_says_so(client, extra, param, fragment):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, extra_body=extra)
    assert fragment in info.value.message and info.value.body["param"] == param


def test_text_format_and_no_tool_choice_are_answered(client):
    answer = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=2, response_format={"type": "text"}, tool_choice="none"
    )
    assert answer.choices[0].message.tool_calls is None


def test_16_concurrent_streams_get_what_each_gets_alone(client, server, lm):
    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 2)]

    def stream(prompt: str) -> tuple[str, str | None]:
        text, finish = "", None
        messages = [{"role": "user", "content": prompt}]
        for chunk in client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=32, temperature=0, stream=True
        ):
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                finish = chunk.choices[0].finish_reason or finish
        return text, finish

    one_by_one = [stream(p) for p in prompts]
    together: list = [None] * len(prompts)
    barrier = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        barrier.wait()
        together[i] = stream(prompts[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together == one_by_one
    direct = [
        lm.generate([lm.chat_ids([{"role": "user", "content": p}])], Sampling(temperature=0, max_new_tokens=32))[0]
        for p in prompts
    ]
    assert [t for t, _ in one_by_one] == [g.text for g in direct]
    metrics = httpx.get(server.url + "/metrics").text
    batches = {
        float(le): float(n)
        for le, n in re.findall(r'modelcycle_lm_batch_size_bucket\{le="([^"]+)",model="tiny-chat"\} (\S+)', metrics)
    }
    assert batches[float("inf")] > batches[1.0]  # some steps decoded several answers at once
    for name in ("time_to_first_token_seconds", "time_per_output_token_seconds"):
        count = re.search(rf'modelcycle_lm_{name}_count\{{model="tiny-chat"\}} (\S+)', metrics)
        assert count and float(count.group(1)) >= 32, name
