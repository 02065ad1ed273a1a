"""One way to open a model package: ``open_package(path)``.

It takes a run folder, its ``model/`` package, a plain Hugging Face folder (a downloaded Qwen)
or a bare peft adapter folder, and every caller gets the same folder discovery, the same
messages, the format check, the sha256 of the weights, safetensors only, and the trust_code gate
for a package whose architecture is a Python file (models/registry.py).

What a package holds (its *kind*) is read from its files, never from a task name: our image
classifiers record an ``architecture`` with a registry ``name``; Hugging Face models say in
config.json's ``architectures`` whether they are sequence classifiers or causal LMs; a folder
with only adapter_config.json is a peft adapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from modelcycle import runs
from modelcycle.errors import UserError
from modelcycle.models import hf, hub

VISION, SEQUENCE, CAUSAL, ADAPTER = "vision", "hf_sequence_classifier", "hf_causal_lm", "hf_adapter"
OWN = "own"  # a package of a task of one's own (tasks/plugin.py): its plugin knows what the files hold
WHAT = {VISION: "an image classifier", SEQUENCE: "a sequence classifier", CAUSAL: "a language model"}
WHAT |= {ADAPTER: "a LoRA adapter", OWN: "a model of a task of its own"}


def find_folder(path: str | Path) -> Path:
    """A run folder, a package, a Hugging Face folder, an adapter folder or a Hub id in the local
    cache (models/hub.py) -> the folder holding the model (its modelcycle.json, config.json or
    adapter_config.json)."""
    return _locate(path)[0]


def _locate(path: str | Path) -> tuple[Path, str | None]:
    """(the model's folder, the Hub id it was found by or None)."""
    repo = hub.hub_id(path)
    path = hub.snapshot(repo) if repo else Path(path)
    for names in ((runs.MANIFEST,), ("config.json", "adapter_config.json")):
        for folder in (path, path / "model"):
            if any((folder / name).is_file() for name in names):
                return folder, repo
    if repo:
        raise UserError(
            f"the cached snapshot of {repo} ({path}) has no config.json nor adapter_config.json: only part of the "
            f"model was downloaded; on a machine with network run `hf download {repo.split('@')[0]}` for all of it"
        )
    if (path / "config.yaml").is_file():
        raise UserError(f"run {path} has no model package yet (model/{runs.MANIFEST}); finish training or --resume it")
    missing = "does not exist and " if not path.exists() else ""
    raise UserError(
        f"{path} {missing}is neither a run folder nor a model package (no {runs.MANIFEST}, no config.json, no "
        "adapter_config.json); pass a run folder (runs/NAME), its model/ package, a Hugging Face model folder, "
        "a peft adapter folder or the id of a model in the Hugging Face cache (owner/name)"
    )


def _kind(folder: Path, manifest: dict | None) -> str:
    config = folder / "config.json"
    if config.is_file():
        try:
            architectures = json.loads(config.read_text()).get("architectures") or []
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            raise UserError(f"{config} is not a valid Hugging Face config (not a JSON object)") from None
        if any(str(a).endswith("ForSequenceClassification") for a in architectures):
            return SEQUENCE
        if any("ForImageClassification" in str(a) for a in architectures):  # ...WithTeacher too
            if manifest is None:
                raise UserError(
                    f"{folder} is a Hugging Face image classifier as downloaded, without modelcycle's package record "
                    "(its classes and preprocessing); fine-tune it first (`modelcycle train RECIPE "
                    f"model.name={folder}`, which takes a Hub id too) and use the run's package"
                )
            return VISION
        return CAUSAL  # any other Hugging Face folder is opened as a causal LM, as before
    if (folder / "adapter_config.json").is_file() and manifest is None:
        return ADAPTER
    if manifest is not None and isinstance(manifest.get("architecture"), dict):
        return VISION
    if manifest is not None and manifest.get("task"):
        return OWN
    raise UserError(f"{folder} holds no model this version can open (no config.json and no architecture)")


@dataclass
class Loaded:
    model: nn.Module  # eval mode, on the CPU
    tokenizer: object | None
    manifest: dict | None

    def __iter__(self):  # model, tokenizer, manifest = package.load_scorer()
        return iter((self.model, self.tokenizer, self.manifest))


@dataclass
class Package:
    folder: Path
    manifest: dict | None  # None for a plain Hugging Face or peft folder
    kind: str
    trust_code: bool = False
    run: Path | None = field(default=None)  # the run folder, when one was given
    hub_id: str | None = None  # owner/name when it was opened from the Hugging Face cache

    @property
    def task(self) -> str | None:
        """The task the manifest records; None for a foreign folder, or a package from before tasks
        were recorded (tasks/registry.for_manifest knows what those are)."""
        return None if self.manifest is None else self.manifest.get("task")

    @property
    def backend(self) -> str:
        return "transformers" if self.manifest is None else self.manifest.get("backend", "torch")

    @property
    def exports(self) -> dict:
        return {} if self.manifest is None else self.manifest.get("exports", {})

    @property
    def name(self) -> str:
        """runs/flowers and runs/flowers/model are both named "flowers"; a Hub model its id."""
        if self.hub_id:
            return self.hub_id
        folder = self.folder.resolve()
        return folder.parent.name if folder.name == "model" else folder.name

    @property
    def version(self) -> str:
        return self.manifest["weights"]["sha256"][:12] if self.manifest else "0"

    @property
    def scores(self) -> bool:
        """A sequence classifier with one output is a scorer (a reward model), not a classifier."""
        if self.kind != SEQUENCE:
            return False
        config = json.loads((self.folder / "config.json").read_text())
        return len(config.get("id2label") or {}) == 1 or config.get("num_labels") == 1

    def require(self, kind: str, message: str) -> Package:
        """This package, or a UserError ``message`` (``{folder}`` and ``{what}`` filled in)."""
        if self.kind != kind:
            raise UserError(message.format(folder=self.folder, what=WHAT[self.kind], task=self.task or self.kind))
        return self

    def verify(self) -> Path | None:
        """The checked weights file of our packages (sha256, safetensors); None for foreign folders."""
        if self.manifest is None:
            return None
        return runs.verified_weights(self.manifest)

    # ------------------------------------------------------------------ builders by kind

    def load_vision(self) -> nn.Module:
        """Build the architecture named in the package and load its checked weights (eval mode).
        A Python-file architecture is built only with ``trust_code`` (see models/registry.py)."""
        from modelcycle.models.registry import build_model

        self.require(
            VISION,
            "{folder} holds a {task} model (Hugging Face layout): `modelcycle evaluate` and `predict` "
            "take it, and transformers loads it as it is; this command takes image classifiers only",
        )
        manifest = self.manifest
        if (self.folder / "config.json").is_file():  # a Hugging Face image classifier (models/hf_vision.py)
            return self._hugging_face_image()
        weights = self.verify()
        arch = manifest["architecture"]
        model = build_model(
            arch["name"],
            arch["in_channels"],
            arch["num_classes"],
            arch["image_size"],
            arch.get("args"),
            package=str(self.folder / runs.MANIFEST),
            trust_code=self.trust_code,
        )
        try:
            model.load_state_dict(load_file(weights))
        except RuntimeError as exc:
            raise UserError(f"{weights} does not fit architecture {arch['name']}: {exc}") from None
        return model.eval()

    def _hugging_face_image(self) -> nn.Module:
        from modelcycle.models.hf_vision import load_package

        self.verify()
        return load_package(self.folder, self.manifest["preprocessing"])

    def load_sequence_classifier(self) -> Loaded:
        return self._hugging_face("a classifier", self.folder, lambda: hf.load_sequence_classifier(self.folder))

    def load_text_classifier(self) -> Loaded:
        """A sequence classifier with a class per label (not a one-output scorer)."""
        if self.kind != SEQUENCE or self.scores:
            what = "a reward model (one score, no classes)" if self.scores else WHAT[self.kind]
            raise UserError(f"{self.folder} is not a text classifier: it holds {what}")
        return self.load_sequence_classifier()

    def load_scorer(self) -> Loaded:
        """A reward model: a sequence classifier with one output, ours or a downloaded one."""
        if not self.scores:
            what = "a classifier with several classes" if self.kind == SEQUENCE else WHAT[self.kind]
            raise UserError(
                f"{self.folder} is not a reward model (a sequence classifier with one output): it holds {what}; "
                "pass a `modelcycle lm reward` run or its model/ package"
            )
        return self.load_sequence_classifier()

    def load_causal(self, dtype: torch.dtype = torch.float32) -> Loaded:
        """A causal LM (or a peft adapter folded into its base) with its tokenizer."""
        if self.kind != ADAPTER:
            return self._hugging_face("a causal LM", self.folder, lambda: hf.load_causal(self.folder, dtype))
        base = open_package(hf.adapter_base(self.folder))
        # an adapter saved by peft alone has no tokenizer files: it reads its base model's
        tokenizer_from = self.folder if hf.has_tokenizer(self.folder) else base.folder
        return self._hugging_face(
            "a causal LM", tokenizer_from, lambda: hf.fold_adapter(base.load_causal(dtype).model, self.folder)
        )

    def _hugging_face(self, what: str, tokenizer_from: Path, build) -> Loaded:
        """Checked weights (sha256, safetensors only), then tokenizer and model, then the
        vocabulary check; transformers' own errors become a UserError naming the folder."""
        self.verify()
        hf.require_safetensors(self.folder)
        try:
            tokenizer = hf.load_tokenizer(tokenizer_from)
            model = build()
        except (OSError, ValueError, KeyError) as exc:
            why = f"transformers could not load {what} and its tokenizer from it: {exc}"
            raise UserError(f"{self.folder}: {why}") from None
        hf.check_vocabulary(model, tokenizer, self.folder)
        return Loaded(model.eval(), tokenizer, self.manifest)

    def load(self, dtype: torch.dtype = torch.float32) -> Loaded:
        """The model of whatever kind the package holds (tokenizer None for image classifiers)."""
        if self.kind == VISION:
            return Loaded(self.load_vision(), None, self.manifest)
        if self.kind == SEQUENCE:
            return self.load_sequence_classifier()
        return self.load_causal(dtype)


def open_package(path: str | Path, trust_code: bool = False) -> Package:
    """The package at ``path`` (a run folder or any folder :func:`find_folder` accepts, or a Hub id
    in the local cache), its manifest read and format-checked; weights are checked when loaded."""
    folder, repo = _locate(path)
    manifest = runs.read_manifest(folder) if (folder / runs.MANIFEST).is_file() else None
    run = folder.parent if folder.name == "model" and (folder.parent / "config.yaml").is_file() else None
    return Package(folder, manifest, _kind(folder, manifest), trust_code, run, repo)


def report_folder(path: str | Path) -> Path:
    """Where ``modelcycle evaluate`` writes the report of a package that is not a run's: beside it,
    or for a Hub model ``reports/OWNER--NAME/`` here (the cache is never written to)."""
    repo = _locate(path)[1]
    return Path("reports") / repo.replace("/", "--").replace("@", "--") if repo else Path(path) / "report"


def pytorch_classifier(path: str | Path, role: str, verb: str) -> dict:
    """The manifest of a package that must hold PyTorch image-classifier weights (a distillation
    teacher, a fine-tuning source). An int8 ONNX copy runs outside PyTorch: it has no weights to
    train or to run under the engine's device and autocast, and its rounding would be passed on
    as if it were knowledge. ``role`` names the setting in messages, ``verb`` what to do instead."""
    package = open_package(path)
    manifest = package.manifest or runs.read_manifest(path)  # a foreign folder: read_manifest says so
    backend = manifest.get("backend", "torch")
    if backend != "torch":
        source = manifest.get("source_package")
        hint = f" ({source})" if source else ""
        raise UserError(
            f"{role} {manifest['_dir']} holds {backend} weights (an int8 or exported copy), not PyTorch weights; "
            f"{verb} from the original run{hint}"
        )
    if package.kind != VISION:
        raise UserError(f"{role} {manifest['_dir']} is a {package.task} model; {verb} needs an image classifier")
    return manifest


def load_model(path: str | Path, trust_code: bool = False) -> tuple[nn.Module, dict]:
    """(image classifier in eval mode, manifest) of a package."""
    package = open_package(path, trust_code)
    return package.load_vision(), package.manifest
