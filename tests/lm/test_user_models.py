"""Issue 16's end-to-end check on the models users bring: each tiny random stand-in of
``stand_ins.py`` (a Qwen2 base whose template closes turns with ``<|im_end|>`` while its eos is
``<|endoftext|>``, a bf16 Qwen2 instruct, a Llama with Llama-3's template) goes through SFT (full
and LoRA), ``lm merge``, DPO from the SFT run, ``lm generate`` and ``modelcycle serve`` driven by
the official ``openai`` client. The SFT runs learn one short answer, so their greedy answers end at
the turn end (never at the length limit); every package loads in plain ``transformers``
(``AutoModelForCausalLM``/``AutoTokenizer``), keeps the source's dtype and is no larger than it
(plus the adapter), and records the turn end in ``modelcycle.json``. Each run is trained once and
shared by the tests that read it. Nothing reaches the network but the local server."""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path

import openai
import pytest
import torch
from stand_ins import STANDINS
from typer.testing import CliRunner

import modelcycle
from modelcycle.cli import app
from modelcycle.config import load_config
from modelcycle.lm.end_of_turn import TEMPLATE
from modelcycle.lm.load import load_lm
from modelcycle.lm.sampling import Sampling
from modelcycle.serve.process import ServerProcess

NAMES = list(STANDINS)
ANSWER = "Hi."
QUESTIONS = ["Say hi.", "What does it do?", "Say hi to me.", "Hi?"]
GREEDY = Sampling(temperature=0, max_new_tokens=16)
SLACK = 512  # bytes: generation_config.json naming the end of turn beside eos, and the like


def turn_end_of(name: str) -> str:
    return STANDINS[name][-1]


def user(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module", autouse=True)
def loopback_only():
    """Any connection but to this machine fails the test (the server is on 127.0.0.1)."""
    real = socket.socket.connect

    def connect(sock, address, *args):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"a network connection was attempted: {address}")
        return real(sock, address, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", connect)
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A repetitive chat file (one answer to four questions) and TRL prompt/chosen/rejected pairs."""
    root = tmp_path_factory.mktemp("user-data")
    rows = [{"messages": [*user(q), {"role": "assistant", "content": ANSWER}]} for q in QUESTIONS]
    (root / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    pairs = [{"prompt": q, "chosen": ANSWER, "rejected": "The for statement."} for q in QUESTIONS]
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs * 2))
    return root


def common(task: str, run_name: str, root: Path, *more: str) -> list[str]:
    return [
        f"run.task={task}",
        f"run.dir={root / 'runs'}",
        f"run.name={run_name}",
        "lm.context_length=64",
        "train.batch_size=8",
        "train.schedule=none",
        "train.device=cpu",
        "train.monitor=train_loss",
        "train.log_every=1000",
        *more,
    ]


class Runs:
    """Each stage's run of each stand-in, trained on first use and kept for the module."""

    def __init__(self, standins: dict[str, Path], data: Path, root: Path):
        self.standins, self.data, self.root = standins, data, root
        self.done: dict[tuple[str, str], modelcycle.Run] = {}

    def _train(self, stage: str, name: str, task: str, *more: str):
        if (stage, name) not in self.done:
            config = load_config(None, common(task, f"{stage}-{name}", self.root, *more))
            self.done[stage, name] = modelcycle.train(config, progress=False)
        return self.done[stage, name]

    def sft(self, name: str):
        """Full SFT until the one answer is learnt (60 steps)."""
        more = [f"model.init_from={self.standins[name]}", f"lm.train_files=[{self.data / 'chat.jsonl'}]"]
        return self._train("sft", name, "sft", *more, "lm.eval_samples=0", "train.epochs=60", "train.lr=0.01")

    def lora(self, name: str):
        more = [f"model.init_from={self.standins[name]}", f"lm.train_files=[{self.data / 'chat.jsonl'}]"]
        return self._train("lora", name, "sft", *more, "lm.eval_samples=0", "lora.r=4", "train.epochs=4")

    def dpo(self, name: str):
        """DPO from the SFT run on TRL prompt/chosen/rejected pairs (4 steps)."""
        pairs = self.data / "pairs.jsonl"
        more = [f"model.init_from={self.sft(name).path}", f"data.train_files=[{pairs}]", f"data.val_files=[{pairs}]"]
        return self._train("dpo", name, "dpo", *more, "train.epochs=4", "train.lr=1e-4")


@pytest.fixture(scope="module")
def trained(standins, data, tmp_path_factory) -> Runs:
    return Runs(standins, data, tmp_path_factory.mktemp("user-runs"))


def manifest(package: Path) -> dict:
    return json.loads((package / "modelcycle.json").read_text())


def total_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "modelcycle.json")


def expected_record(source: Path, name: str) -> dict:
    from transformers import AutoTokenizer

    token = turn_end_of(name)
    index = AutoTokenizer.from_pretrained(source, local_files_only=True).convert_tokens_to_ids(token)
    return {"token": token, "id": index, "from": TEMPLATE}


def assert_faithful(package: Path, source: Path, name: str, adapter: int = 0):
    """``package`` loads in plain transformers, in the source's dtype, with the source's vocabulary
    and template, is no larger than the source (plus ``adapter`` bytes), and records and stops at
    the stand-in's turn end. Returns the model as transformers loads it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(package, local_files_only=True)
    original = AutoModelForCausalLM.from_pretrained(source, local_files_only=True)
    assert model.dtype == original.dtype == (STANDINS[name][6] or torch.float32)
    assert type(model) is type(original)
    tokenizer, own = (AutoTokenizer.from_pretrained(f, local_files_only=True) for f in (package, source))
    assert tokenizer.get_vocab() == own.get_vocab() and tokenizer.eos_token == own.eos_token
    assert tokenizer.apply_chat_template(user("Hi?"), tokenize=False) == own.apply_chat_template(
        user("Hi?"), tokenize=False
    )
    assert total_size(package) <= total_size(source) + adapter + SLACK
    record = expected_record(source, name)
    assert manifest(package)["end_of_turn"] == record
    stops = model.generation_config.eos_token_id
    assert record["id"] in (stops if isinstance(stops, list) else [stops])  # transformers' generate stops there
    return model, tokenizer


@pytest.mark.parametrize("name", NAMES)
def test_sft_full_answers_and_stops_at_the_turn_end(trained, standins, name):
    run = trained.sft(name)
    model, tokenizer = assert_faithful(run.model_dir, standins[name], name)
    end = tokenizer.convert_tokens_to_ids(turn_end_of(name))
    lm = load_lm(run.path, device="cpu")
    for answer in lm.generate([lm.chat_ids(user(q)) for q in QUESTIONS[:2]], GREEDY):
        assert (answer.finish_reason, answer.token_ids[-1], answer.text) == ("stop", end, ANSWER)
    # and transformers' own greedy generate, from the package alone, stops at the same token
    prompt = tokenizer.apply_chat_template(user(QUESTIONS[0]), add_generation_prompt=True, return_tensors="pt")
    ids = prompt["input_ids"] if not isinstance(prompt, torch.Tensor) else prompt
    out = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
    assert out[-1] == end and tokenizer.decode(out, skip_special_tokens=True).strip() == ANSWER


@pytest.mark.parametrize("name", NAMES)
def test_sft_lora_then_merge(trained, standins, name, tmp_path):
    run = trained.lora(name)
    adapter = total_size(run.model_dir / "adapter")
    assert_faithful(run.model_dir, standins[name], name, adapter)
    merged = modelcycle.merge_lora(run.path, tmp_path / "merged")
    folder = Path(merged["_dir"])
    model, _ = assert_faithful(folder, standins[name], name)
    assert merged["end_of_turn"] == manifest(run.model_dir)["end_of_turn"]  # the source package's record
    ids = load_lm(run.path, device="cpu").chat_ids(user("Hi?"))
    with torch.no_grad():
        lora_logits = load_lm(run.path, device="cpu").model(torch.tensor([ids])).logits
        merged_logits = load_lm(folder, device="cpu").model(torch.tensor([ids])).logits
    assert torch.allclose(merged_logits, lora_logits, atol=1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_dpo_from_the_sft_run(trained, standins, name):
    run = trained.dpo(name)
    last = run.epoch_metrics()[-1]
    assert last["train_loss"] == last["train_loss"] and last["val_accuracy"] >= 0.5
    assert_faithful(run.model_dir, standins[name], name)
    lm = load_lm(run.path, device="cpu")
    [answer] = lm.generate([lm.chat_ids(user(QUESTIONS[0]))], GREEDY)
    assert (answer.finish_reason, answer.text) == ("stop", ANSWER)  # still answers, and still stops


@pytest.mark.parametrize("name", NAMES)
def test_lm_generate_cli(trained, name):
    run = trained.sft(name)
    result = CliRunner().invoke(
        app, ["lm", "generate", str(run.path), QUESTIONS[1], "--temperature", "0", "--max-new-tokens", "16"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ANSWER + "\n" and "ended by stop" in result.stderr


@pytest.fixture(scope="module")
def server(trained):
    """One server for the three SFT runs, each under its stand-in's name."""
    specs = [f"{name}={trained.sft(name).path}" for name in NAMES]
    env = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with ServerProcess(specs, "serve.max_new_tokens=32", env=env) as process:
        yield process


@pytest.mark.parametrize("name", NAMES)
def test_served_by_the_openai_api(server, trained, name):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60)
    assert name in {m.id for m in client.models.list().data}
    lm = load_lm(trained.sft(name).path, device="cpu")
    [want] = lm.generate([lm.chat_ids(user(QUESTIONS[2]))], GREEDY)
    answer = client.chat.completions.create(model=name, messages=user(QUESTIONS[2]), max_tokens=16, temperature=0)
    [choice] = answer.choices
    assert (choice.message.content, choice.finish_reason) == (want.text, "stop")
    assert want.text == ANSWER and answer.usage.completion_tokens == len(want.token_ids)


def test_ppo_rollouts_of_a_tokenizer_without_a_padding_token(standins):
    """Llama 3 ships no pad_token: PPO's sampler pads prompts with the first stop token (masked)."""
    from modelcycle.lm.end_of_turn import end_of_turn_ids
    from modelcycle.tasks.ppo_rollout import sample

    lm = load_lm(standins["llama3"], device="cpu")
    assert lm.tokenizer.pad_token_id is None
    stop = end_of_turn_ids(lm.tokenizer, lm.model.generation_config)
    prompts = [lm.chat_ids(user(q)) for q in QUESTIONS[:2]]
    assert len(prompts[0]) != len(prompts[1])
    rollout = sample(lm.model, prompts, None, stop, 4, 1.0)
    assert rollout.sequences.shape == (2, max(map(len, prompts)) + 4) and rollout.mask.sum() > 0
