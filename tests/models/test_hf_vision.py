"""Hugging Face image classifiers as model.name (issue 17, item 1): tiny random ViT, ResNet and
ConvNeXt folders (hf_images.py) fine-tuned on the shapes images through train -> evaluate ->
export (ONNX parity) -> predict -> serve (a real server on 127.0.0.1) -> transformers' own
AutoModelForImageClassification / AutoImageProcessor; their image processors' settings as the
run's preprocessing; freeze modes and LoRA; a Hub id from a fake local cache; bad input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from hf_images import write_source, write_text_model
from PIL import Image
from safetensors.torch import load_file

import modelcycle
from helpers import b64_file, one_torch_thread
from modelcycle.config import load_config
from modelcycle.errors import ConfigError, UserError
from modelcycle.serve.process import ServerProcess

sys.path.insert(0, str(Path(__file__).parents[1] / "lm"))  # hub_models imports its neighbours by name
from hub_models import COMMIT, add_to_cache  # noqa: E402

KINDS = ("vit", "resnet", "convnext")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    yield from one_torch_thread()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-image-sources")
    return {kind: write_source(kind, root / kind) for kind in KINDS}


def overrides(data: Path, runs: Path, name: str, model: str | Path, *more: str) -> list[str]:
    return [
        f"data.root={data}",
        f"model.name={model}",
        *("data.workers=0", "train.epochs=1", "train.batch_size=8", "train.lr=0.01", "train.warmup_epochs=0"),
        *("train.device=cpu", "eval.batch_size=64", f"run.dir={runs}", f"run.name={name}"),
        *more,
    ]


def train(data: Path, runs: Path, name: str, model: str | Path, *more: str) -> Path:
    return modelcycle.train(load_config(None, overrides(data, runs, name, model, *more)), progress=False).path


@pytest.fixture(scope="module")
def runs(sources, shapes_data, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hf-image-runs")
    return {kind: train(shapes_data, out, kind, sources[kind]) for kind in KINDS}


@pytest.fixture(scope="module")
def pictures(shapes_data) -> list[Path]:
    return sorted((shapes_data.parent / "images").glob("class_*/*.png"))


def processor_pixels(folder: Path, image: Image.Image) -> np.ndarray:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(folder)(image, return_tensors="np")["pixel_values"][0]


# The image sizes below need no resampling (the shorter side is already the resize target), so
# our pipeline and transformers' must agree to float precision: geometry, crop, rescale and
# normalisation; only the resampling filter (OpenCV's, not PIL's) is left out.
@pytest.mark.parametrize(("kind", "size"), [("vit", (32, 32)), ("resnet", (36, 50)), ("convnext", (40, 57))])
def test_preprocessing_is_the_image_processors(sources, kind, size, tmp_path):
    from modelcycle.evaluation.inference import preprocess
    from modelcycle.models.hf_vision import preprocessing

    pre = preprocessing(sources[kind], kind)
    height, width = size
    picture = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path = tmp_path / "picture.png"
    Image.fromarray(picture).save(path)
    ours = preprocess({"preprocessing": pre, "classes": ["a"]}, [(path, 0)])[0].numpy()
    theirs = processor_pixels(sources[kind], Image.open(path))
    assert ours.shape == theirs.shape == (3, 32, 32)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_processor_settings_become_the_package_preprocessing(runs):
    vit = json.loads((runs["vit"] / "model" / "modelcycle.json").read_text())["preprocessing"]
    assert (vit["image_size"], vit["resize_to"], vit["keep_aspect"]) == (32, 32, False)
    resnet = json.loads((runs["resnet"] / "model" / "modelcycle.json").read_text())["preprocessing"]
    assert (resnet["image_size"], resnet["resize_to"], resnet["keep_aspect"]) == (32, 36, True)
    assert resnet["mean"] == pytest.approx([0.485, 0.456, 0.406]) and resnet["std"] == pytest.approx(
        [0.229, 0.224, 0.225]
    )
    convnext = json.loads((runs["convnext"] / "model" / "modelcycle.json").read_text())["preprocessing"]
    # x/127.5 normalised by mean 0.9, std 0.5 is (x/255 - 0.45)/0.25
    assert convnext["mean"] == pytest.approx([0.45, 0.5, 0.55]) and convnext["std"] == pytest.approx([0.25, 0.3, 0.35])


@pytest.mark.parametrize("kind", KINDS)
def test_package_loads_in_transformers_with_the_new_labels_and_same_logits(runs, kind, pictures):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from modelcycle.evaluation.inference import preprocess
    from modelcycle.packages import load_model

    package = runs[kind] / "model"
    manifest = json.loads((package / "modelcycle.json").read_text())
    assert manifest["architecture"]["layout"] == "transformers" and manifest["classes"] == [
        "class_0",
        "class_1",
        "class_2",
    ]
    theirs = AutoModelForImageClassification.from_pretrained(package).eval()
    assert theirs.config.id2label == {0: "class_0", 1: "class_1", 2: "class_2"}
    assert theirs.config.label2id == {"class_0": 0, "class_1": 1, "class_2": 2}
    AutoImageProcessor.from_pretrained(package)  # the processor config travels with the package
    ours, manifest = load_model(package)
    pixels = preprocess(manifest, [(p, 0) for p in pictures[::9]])
    with torch.no_grad():
        torch.testing.assert_close(ours(pixels), theirs(pixel_values=pixels).logits)


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_export_onnx_and_predict(runs, kind, pictures):
    run = runs[kind]
    metrics = modelcycle.evaluate(run)
    assert metrics["num_samples"] == 6 and 0.0 <= metrics["accuracy"] <= 1.0
    record = modelcycle.export_model(run, "onnx")
    assert record["parity"]["max_abs_diff"] < 1e-3, record["parity"]
    images = pictures[::12]
    torch_answers = modelcycle.predict(run, images, topk=3, backend="torch")
    onnx_answers = modelcycle.predict(run, images, topk=3, backend="onnx")
    assert [a["label"] for a in torch_answers] == [a["label"] for a in onnx_answers]
    assert all(a["label"] in ("class_0", "class_1", "class_2") for a in torch_answers)


def test_a_server_answers_for_every_kind_as_predict_does(runs, pictures):
    image = pictures[0]
    server = ServerProcess(list(runs.values()), "serve.max_batch_delay_ms=5")
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        for kind, run in runs.items():
            want = modelcycle.predict(run, [image], topk=3, backend="torch")[0]
            answer = client.post(f"/v1/predict?model={kind}", json={"images": [b64_file(image)], "topk": 3})
            assert answer.status_code == 200, answer.text
            got = answer.json()["predictions"][0]
            assert got["label"] == want["label"]
            assert got["probability"] == pytest.approx(want["probability"], abs=1e-4)


def test_freeze_backbone_trains_only_the_new_head(sources, shapes_data, tmp_path):
    run = train(shapes_data, tmp_path, "frozen", sources["vit"], "model.freeze=backbone")
    source, trained = load_file(sources["vit"] / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    body = [key for key in trained if not key.startswith("classifier.")]
    assert body and all(torch.equal(trained[key], source[key]) for key in body)
    assert trained["classifier.weight"].shape == (3, 16)  # the head of 5 ImageNet-ish classes became one of 3
    manifest = json.loads((run / "model" / "modelcycle.json").read_text())
    assert manifest["fine_tuning"]["freeze"] == "backbone"
    assert manifest["fine_tuning"]["trainable"] == 3 * 16 + 3


def test_freeze_all_but_last_block_of_a_resnet(sources, shapes_data, tmp_path):
    run = train(shapes_data, tmp_path, "last", sources["resnet"], "model.freeze=all_but_last:1")
    source, trained = load_file(sources["resnet"] / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    stem = "resnet.embedder.embedder.convolution.weight"
    last = "resnet.encoder.stages.1.layers.0.layer.1.convolution.weight"
    assert torch.equal(trained[stem], source[stem])
    assert not torch.equal(trained[last], source[last])


def test_lora_trains_adapters_and_the_package_holds_them_merged(sources, shapes_data, tmp_path):
    run = train(shapes_data, tmp_path, "lora", sources["vit"], "model.lora.r=4", "train.lr=0.05")
    package = run / "model"
    trained, source = load_file(package / "model.safetensors"), load_file(sources["vit"] / "model.safetensors")
    assert not any("lora" in key for key in trained)
    attention = "vit.encoder.layer.0.attention.attention"  # q_proj/k_proj in memory, saved as transformers saves
    query, key = f"{attention}.query.weight", f"{attention}.key.weight"
    assert not torch.equal(trained[query], source[query])  # the merged update
    assert torch.equal(trained[key], source[key])  # not a LoRA target: untouched
    manifest = json.loads((package / "modelcycle.json").read_text())
    tuning = manifest["fine_tuning"]
    assert tuning["lora"]["target_modules"] == ["q_proj", "v_proj"] and tuning["merged"]
    from transformers import AutoModelForImageClassification

    assert AutoModelForImageClassification.from_pretrained(package).config.num_labels == 3
    assert modelcycle.evaluate(run)["num_samples"] == 6


def test_a_hub_id_is_read_from_the_local_cache(sources, shapes_data, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    add_to_cache(cache, "tiny-org/tiny-vit", sources["vit"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    run = train(shapes_data, tmp_path / "runs", "hub", "tiny-org/tiny-vit")
    architecture = json.loads((run / "model" / "modelcycle.json").read_text())["architecture"]
    assert architecture["name"] == "tiny-org/tiny-vit" and architecture["revision"] == COMMIT
    with pytest.raises(UserError, match="holds no snapshot of the model tiny-org/missing"):
        train(shapes_data, tmp_path / "runs", "missing", "tiny-org/missing")


def test_bad_models_and_clashing_settings_are_refused_clearly(sources, shapes_data, tmp_path):
    def refused(model, *more, error=ConfigError):
        with pytest.raises(error) as caught:
            train(shapes_data, tmp_path / "runs", "bad", model, *more)
        return str(caught.value)

    text = refused(write_text_model(tmp_path / "bert"))
    assert "bert" in text and "run.task=text_classify" in text
    (tmp_path / "empty").mkdir()
    assert "without config.json" in refused(tmp_path / "empty")
    no_processor = tmp_path / "no-processor"
    write_source("vit", no_processor).joinpath("preprocessor_config.json").unlink()
    assert "has no preprocessor_config.json" in refused(no_processor, error=UserError)
    text = refused(sources["vit"], "data.image_size=64", "data.mean=[0.5,0.5,0.5]")
    assert "data.image_size=64 (the processor's: 32)" in text and "preprocessor_config.json" in text
    assert "data.mean" not in text  # the same value as the processor's is no clash
    assert "LoRA is for Hugging Face models" in refused("simple_cnn", "model.lora.r=4")
    assert "model.freeze=backbone with model.lora.r=4" in refused(
        sources["vit"], "model.freeze=backbone", "model.lora.r=4"
    )


def test_a_downloaded_folder_is_fine_tuned_before_predict_or_export(sources, pictures):
    with pytest.raises(UserError, match="fine-tune it first"):
        modelcycle.predict(sources["vit"], pictures[:1])
    with pytest.raises(UserError, match="fine-tune it first"):
        modelcycle.export_model(sources["vit"], "onnx")


def test_distilling_a_hugging_face_teacher_takes_its_processor_preprocessing(runs, tmp_path):
    """The teacher's run recipe leaves data.* at their defaults (its image processor decided them):
    the student's recipe takes the package's preprocessing, so teacher and student see one picture."""
    from modelcycle.tasks.distill import student_config

    config = student_config(runs["resnet"], "simple_cnn", tmp_path / "student")
    pre = json.loads((runs["resnet"] / "model" / "modelcycle.json").read_text())["preprocessing"]
    assert pre["image_size"] != load_config(None).data.image_size  # what made the bug visible
    for key in ("image_size", "channels", "mean", "std", "resize_to", "keep_aspect"):
        assert getattr(config.data, key) == pre[key], key


def test_pruning_a_hugging_face_package_is_refused_with_what_to_do_instead(runs, tmp_path):
    with pytest.raises(UserError, match="Hugging Face image model .*Quantize it .* or distill it"):
        modelcycle.prune_model(runs["vit"], tmp_path / "pruned", 0.5)
    assert not (tmp_path / "pruned").exists()
