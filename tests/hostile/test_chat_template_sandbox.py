"""Issue 14, item 7 (the chat-template part): a model folder whose chat template the Jinja sandbox
refuses (or that is not Jinja at all) is a one-line ``error:`` and exit 2 for the CLI, and an
error when ``modelcycle serve`` loads it, never a traceback or a server that fails per request."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import assert_user_error, cli_env, run_cli
from lm.tiny_lm import build_model, build_tokenizer
from modelcycle.errors import UserError
from modelcycle.lm.chat_template import chat_ids
from modelcycle.lm.model import package_writer

TEMPLATES = {
    "sandbox": "{{ ''.__class__.__mro__[1].__subclasses__() }}{% for m in messages %}{{ m['content'] }}{% endfor %}",
    "syntax": "{% for m in messages %}{{ m['content'] }",
}
SAYS = {"sandbox": "sandbox refuses", "syntax": "not valid Jinja"}


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("lm") / "tiny-chat"
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    manifest = {"task": "sft", "backend": "transformers", "metrics": {}, "source_run": str(run)}
    package_writer(model, tokenizer, None)(run / "model", model.state_dict(), manifest)
    return run / "model"


def with_template(package: Path, out: Path, template: str) -> Path:
    """A copy of the package whose tokenizer carries ``template``."""
    import shutil

    shutil.copytree(package, out)
    (out / "chat_template.jinja").write_text(template)
    config = json.loads((out / "tokenizer_config.json").read_text())
    if "chat_template" in config:
        config["chat_template"] = template
        (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("kind", TEMPLATES)
def test_a_refused_template_is_a_user_error_in_python(kind):
    tokenizer = build_tokenizer()
    tokenizer.chat_template = TEMPLATES[kind]
    with pytest.raises(UserError, match=SAYS[kind]):
        chat_ids(tokenizer, [{"role": "user", "content": "hi"}], name="tiny")


@pytest.mark.parametrize("kind", TEMPLATES)
def test_the_cli_says_error_and_exits_2(package, tmp_path, kind):
    folder = with_template(package, tmp_path / kind, TEMPLATES[kind])
    generated = run_cli("lm", "generate", folder, "hello", "--max-new-tokens", "2", "--device", "cpu")
    assert_user_error(generated, "chat template", SAYS[kind])
    chat = subprocess.run(
        [sys.executable, "-m", "modelcycle", "lm", "chat", str(folder), "--device", "cpu"],
        input="hello\n",
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=300,
    )
    assert_user_error(chat, "chat template", SAYS[kind])


def test_serve_refuses_the_model_when_it_loads(package, tmp_path):
    folder = with_template(package, tmp_path / "sandbox", TEMPLATES["sandbox"])
    served = run_cli("serve", folder, "--port", "0", timeout=300)  # exits at once: nothing is served
    assert_user_error(served, "chat template", SAYS["sandbox"])
