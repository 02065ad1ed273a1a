"""The formats people bring, end to end on a 2-layer, width-64 Llama: SFT on an Alpaca JSON array
(LLaMA-Factory's layout) and on ShareGPT Parquet, a reward model and DPO on TRL pairs with an
implicit prompt (Parquet train, JSON array held out, by data.train_files / data.val_files), and
PPO's prompts from a prompt-only file, each run's data read and its format printed; the new keys
(data.train_files, data.val_files) read by the preference tasks only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import one_torch_thread
from lm_fixtures import train_small_tokenizer
from modelcycle import api
from modelcycle.api import train_ppo
from modelcycle.config import load_config
from modelcycle.errors import ConfigError
from modelcycle.evaluation.policy import evaluate_reward

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SMALL = "{hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4}"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
QUESTIONS = [
    (f"What comes after {WORDS[i]}?", f"{WORDS[i + 1].capitalize()} comes after {WORDS[i]}.") for i in range(9)
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from one_torch_thread()


def user(text: str) -> dict:
    return {"role": "user", "content": text}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("formats")
    alpaca = [{"instruction": q, "input": "", "output": a, "system": "Count."} for q, a in QUESTIONS]
    (root / "alpaca.json").write_text(json.dumps(alpaca, indent=2))
    sharegpt = [{"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]} for q, a in QUESTIONS]
    pq.write_table(pa.Table.from_pylist(sharegpt), root / "sharegpt.parquet")
    pairs = [
        {
            "chosen": [user(q), {"role": "assistant", "content": a}],
            "rejected": [user(q), {"role": "assistant", "content": " ".join(reversed(a.split()))}],
        }
        for q, a in QUESTIONS
    ]
    pq.write_table(pa.Table.from_pylist(pairs[:6]), root / "pairs-train.parquet")
    (root / "pairs-val.json").write_text(json.dumps(pairs[6:]))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q, _ in QUESTIONS))
    train_small_tokenizer(root / "tok", [f"{q} {a}" for q, a in QUESTIONS] * 4, vocab=300)
    return root


def overrides(data: Path, task: str, name: str, *more: str) -> list[str]:
    return [
        f"run.task={task}",
        f"run.name={name}",
        f"run.dir={data / 'runs'}",
        "lm.context_length=64",
        "train.epochs=1",
        "train.batch_size=4",
        "eval.batch_size=8",
        "train.lr=3e-3",
        "train.schedule=none",
        "train.device=cpu",
        *more,
    ]


@pytest.fixture(scope="module")
def sft_alpaca(data):
    """SFT from scratch on the Alpaca JSON array (train and held out)."""
    more = [
        "model.name=llama",
        f"model.args={SMALL}",
        f"lm.tokenizer={data / 'tok'}",
        f"lm.train_files=[{data / 'alpaca.json'}]",
        f"lm.val_files=[{data / 'alpaca.json'}]",
        "lm.eval_samples=0",
    ]
    return api.train(load_config(None, overrides(data, "sft", "sft-alpaca", *more)), progress=False)


def test_sft_on_an_alpaca_json_array_and_on_sharegpt_parquet(data, sft_alpaca, capsys):
    last = sft_alpaca.epoch_metrics()[-1]
    assert last["val_loss"] == last["val_loss"] and last["val_loss"] > 0
    parquet = data / "sharegpt.parquet"
    more = [f"model.init_from={sft_alpaca.path}", f"lm.train_files=[{parquet}]", f"lm.val_files=[{parquet}]"]
    capsys.readouterr()
    run = api.train(load_config(None, overrides(data, "sft", "sft-sharegpt", *more)), progress=False)
    assert run.epoch_metrics()[-1]["val_loss"] > 0
    assert f"{parquet}: 9 conversations (Parquet; ShareGPT)" in capsys.readouterr().err


def pair_files(data: Path) -> list[str]:
    return [f"data.train_files=[{data / 'pairs-train.parquet'}]", f"data.val_files=[{data / 'pairs-val.json'}]"]


@pytest.fixture(scope="module")
def reward(data, sft_alpaca):
    more = [f"model.init_from={sft_alpaca.path}", *pair_files(data)]
    return api.train(load_config(None, overrides(data, "reward", "reward", *more)), progress=False)


def test_reward_and_dpo_on_trl_pairs_with_an_implicit_prompt(data, sft_alpaca, reward, capsys):
    more = [f"model.init_from={sft_alpaca.path}", *pair_files(data)]
    capsys.readouterr()
    dpo = api.train(load_config(None, overrides(data, "dpo", "dpo", *more)), progress=False)
    last = dpo.epoch_metrics()[-1]
    assert {"train_loss", "val_accuracy"} <= set(last) and last["val_loss"] == last["val_loss"]
    printed = capsys.readouterr().err
    assert "6 preference pairs (Parquet; prompt/chosen/rejected)" in printed
    assert "3 preference pairs (JSON array; prompt/chosen/rejected)" in printed
    manifest = json.loads((reward.model_dir / "modelcycle.json").read_text())
    assert manifest["preprocessing"]["val_files"] == [str((data / "pairs-val.json").resolve())]
    assert manifest["preprocessing"]["pairs"] == {"train": 6, "val": 3}
    assert evaluate_reward(reward.path)["num_pairs"] == 3  # `evaluate` finds the held-out files again


def test_ppo_answers_the_prompts_of_a_prompt_only_file(data, sft_alpaca, reward, capsys):
    more = [
        f"run.dir={data / 'runs'}",
        "run.name=ppo",
        f"policy={sft_alpaca.model_dir}",
        f"reward={reward.model_dir}",
        f"data.train_files=[{data / 'prompts.jsonl'}]",
        "lm.context_length=64",
        "ppo.iterations=1",
        "ppo.rollout_batch=4",
        "ppo.minibatch=4",
        "ppo.update_epochs=1",
        "ppo.max_new_tokens=8",
    ]
    capsys.readouterr()
    run = train_ppo(None, more)
    assert [m["iteration"] for m in run.metrics] == [1]
    assert f"{data / 'prompts.jsonl'}: 9 prompts (JSONL; prompt-only)" in capsys.readouterr().err


def test_the_new_keys_are_read_by_the_preference_tasks_only():
    from modelcycle.tasks.registry import check_reads

    for task in ("reward", "dpo"):
        check_reads(load_config(None, [f"run.task={task}", "data.train_files=[a.json]", "data.val_files=[b.json]"]))
    check_reads(load_config(None, ["run.task=ppo", "data.train_files=[a.json]"]))
    with pytest.raises(ConfigError, match="run.task=ppo does not read"):
        check_reads(load_config(None, ["run.task=ppo", "data.val_files=[a.json]"]))
    with pytest.raises(ConfigError, match="run.task=sft does not read"):
        check_reads(load_config(None, ["run.task=sft", "data.train_files=[a.json]"]))
