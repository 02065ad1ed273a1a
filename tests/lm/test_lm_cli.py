"""`modelcycle lm generate` (in-process, through typer's runner: a subprocess would spend most of
its time importing transformers) and `modelcycle lm chat` (a real child process driven through its
stdin), their output compared with the same greedy generation done here."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from typer.testing import CliRunner

from helpers import cli_env
from modelcycle.cli import app
from modelcycle.errors import UserError
from modelcycle.lm.chat import ChatSession
from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling

GREEDY = ["--temperature", "0", "--max-new-tokens", "10"]


@pytest.fixture(scope="module")
def lm(tiny_lm_run):
    return load_lm(tiny_lm_run, device="cpu")


def test_generate_streams_the_chat_answer_and_batches_plain_prompts(lm, tiny_lm_run):
    sampling = Sampling(temperature=0, max_new_tokens=10)
    cli = CliRunner()
    chat = cli.invoke(app, ["lm", "generate", str(tiny_lm_run), "Explain the for statement", *GREEDY])
    assert chat.exit_code == 0, chat.output
    expected = lm.generate([lm.chat_ids([{"role": "user", "content": "Explain the for statement"}])], sampling)[0]
    assert chat.stdout == expected.text + "\n"
    assert "10 new tokens, ended by length" in chat.stderr

    plain = cli.invoke(app, ["lm", "generate", str(tiny_lm_run), "def f(", "The with", "--no-chat", *GREEDY])
    assert plain.exit_code == 0, plain.output
    texts = [g.text for g in lm.generate(["def f(", "The with"], sampling)]
    assert plain.stdout == f"--- 0: def f(\n{texts[0]}\n--- 1: The with\n{texts[1]}\n"


class Reader:
    """Collects a child's stdout bytes in a thread, so the test can wait for an answer with a deadline."""

    def __init__(self, stream):
        self.data = bytearray()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        while chunk := os.read(stream.fileno(), 4096):
            self.data += chunk

    def wait_for(self, size: int, timeout: float = 120) -> bytes:
        deadline = time.monotonic() + timeout
        while len(self.data) < size and time.monotonic() < deadline:
            time.sleep(0.02)
        return bytes(self.data)


def test_chat_answers_each_line_as_it_comes_and_remembers_the_conversation(lm, tiny_lm_run):
    session = ChatSession(lm, Sampling(temperature=0, max_new_tokens=8), system="Be brief.")
    first = "".join(p.text for p in session.send("hello")).encode() + b"\n"
    second = "".join(p.text for p in session.send("and then?")).encode() + b"\n"
    assert len(session.messages) == 5  # system, user, assistant, user, assistant

    command = [sys.executable, "-m", "modelcycle", "lm", "chat", str(tiny_lm_run), "--system", "Be brief."]
    env = {**cli_env(), "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [*command, "--temperature", "0", "--max-new-tokens", "8"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out = Reader(child.stdout)
    try:
        child.stdin.write(b"hello\n")
        child.stdin.flush()
        # the first answer arrives while stdin is still open: an interactive session, not a batch
        assert out.wait_for(len(first)) == first
        child.stdin.write(b"and then?\n")
        child.stdin.write(("word " * 200 + "\n").encode())  # longer than the context: an error, then go on
        child.stdin.write(b"/exit\n")
        child.stdin.flush()
        child.stdin.close()
        assert child.wait(120) == 0
        stderr = child.stderr.read().decode()
    finally:
        child.kill()
    assert out.wait_for(len(first + second)) == first + second  # the second answer saw the first exchange
    assert "maximum context length is 128 tokens" in stderr


def test_chat_refuses_a_model_without_a_chat_template(plain_hf_folder, tmp_path):
    import json
    import shutil

    folder = tmp_path / "no-template"
    shutil.copytree(plain_hf_folder, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    result = CliRunner().invoke(app, ["lm", "chat", str(folder)], input="hello\n")
    assert isinstance(result.exception, UserError), result.output
    assert "no chat template" in str(result.exception) and "--no-chat" in str(result.exception)
