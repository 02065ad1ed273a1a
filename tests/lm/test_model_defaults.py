"""Issue 16, item 7: a model's generation_config.json sampling defaults apply to `lm generate`,
`lm chat` and the server unless a flag or a request field says otherwise; `lm chat` at a terminal
edits lines and recalls them (readline), driven here through a pseudo-terminal."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import openai
import pytest
from transformers import GenerationConfig
from typer.testing import CliRunner

from helpers import cli_env
from modelcycle.cli import app
from modelcycle.errors import UserError
from modelcycle.lm.defaults import model_defaults, with_defaults
from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling
from modelcycle.serve.process import ServerProcess


@pytest.fixture(scope="module")
def greedy_by_default(plain_hf_folder, tmp_path_factory):
    """The tiny model whose generation_config.json asks for greedy answers of 5 tokens."""
    folder = tmp_path_factory.mktemp("defaults") / "greedy-five"
    shutil.copytree(plain_hf_folder, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config.update(do_sample=False, max_new_tokens=5, top_k=20)
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


def test_only_what_the_file_sets_counts_and_do_sample_false_is_greedy():
    qwen = GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    assert model_defaults(qwen) == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    assert model_defaults(GenerationConfig(eos_token_id=[1, 2])) == {}
    assert model_defaults(None) == {}
    assert model_defaults(GenerationConfig(do_sample=False, temperature=0.6))["temperature"] == 0.0
    with pytest.raises(UserError, match="generation_config.json: top_p"):
        model_defaults(GenerationConfig(top_p=0.0))
    chosen = with_defaults({"temperature": 0.2, "top_p": None}, model_defaults(qwen), {"top_p": 1.0, "top_k": 0})
    assert (chosen.temperature, chosen.top_p, chosen.top_k) == (0.2, 0.8, 20)


def test_generate_uses_the_models_defaults_unless_a_flag_says_otherwise(greedy_by_default):
    lm = load_lm(greedy_by_default, device="cpu")
    cli = CliRunner()
    plain = cli.invoke(app, ["lm", "generate", str(greedy_by_default), "def f(", "--no-chat"])
    assert plain.exit_code == 0, plain.output
    want = lm.generate(["def f("], Sampling(temperature=0, max_new_tokens=5, top_k=20))[0]
    assert plain.stdout == want.text + "\n" and f"{len(want.token_ids)} new tokens" in plain.stderr
    longer = cli.invoke(app, ["lm", "generate", str(greedy_by_default), "def f(", "--no-chat", "--max-new-tokens", "7"])
    assert "7 new tokens" in longer.stderr or "ended by stop" in longer.stderr


def test_the_server_uses_them_for_the_fields_a_request_leaves_out(greedy_by_default):
    lm = load_lm(greedy_by_default, device="cpu")
    messages = [{"role": "user", "content": "Explain the for statement"}]
    prompt = lm.chat_ids(messages)
    with ServerProcess([greedy_by_default], env={"OMP_NUM_THREADS": "1"}) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
        plain = client.chat.completions.create(model="greedy-five", messages=messages)
        sampled = client.chat.completions.create(
            model="greedy-five", messages=messages, temperature=1.0, seed=3, max_tokens=8
        )
        completion = client.completions.create(model="greedy-five", prompt="def f(")
    greedy = lm.generate([prompt], Sampling(temperature=0, max_new_tokens=5))[0]
    assert plain.choices[0].message.content == greedy.text and plain.usage.completion_tokens <= 5
    # the request's temperature wins; top_k=20 from the file still applies where the request is silent
    seeded = lm.generate([prompt], Sampling(temperature=1.0, top_k=20, seed=3, max_new_tokens=8))[0]
    assert sampled.choices[0].message.content == seeded.text
    assert completion.usage.completion_tokens <= 5  # the file's max_new_tokens, not OpenAI's 16


def read_until(fd: int, wanted: bytes, timeout: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        try:
            seen += os.read(fd, 4096)
        except OSError:  # the child closed the terminal
            break
    return seen


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_chat_at_a_terminal_edits_lines_and_recalls_them(tiny_lm_run):
    import pty

    command = [sys.executable, "-m", "modelcycle", "lm", "chat", str(tiny_lm_run), "--max-new-tokens", "2"]
    parent, child_end = pty.openpty()
    env = {**cli_env(), "OMP_NUM_THREADS": "1", "TERM": "xterm"}
    child = subprocess.Popen(command, stdin=child_end, stdout=child_end, stderr=child_end, env=env)
    os.close(child_end)
    try:
        assert b"you>" in read_until(parent, b"you>")
        os.write(parent, b"/reset\r")
        assert b"conversation forgotten" in read_until(parent, b"you>")
        os.write(parent, b"\x1b[A\r")  # Up: the previous line again
        again = read_until(parent, b"you>")
        assert b"conversation forgotten" in again
        os.write(parent, b"/ext\x1b[Di\r")  # "/ext", Left, "i": "/exit" once edited
        child.wait(60)
    finally:
        child.kill()
        os.close(parent)
    assert child.returncode == 0
