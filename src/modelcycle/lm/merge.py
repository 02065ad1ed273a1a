"""``modelcycle lm merge``: fold a LoRA adapter into its base model's weights, giving a plain
language-model package that needs neither peft nor the base folder to run.

A LoRA SFT run keeps its adapter alone in ``model/adapter/`` (a few hundred kilobytes) beside
the merged model; merge rebuilds the merged model from the adapter and any copy of the base
(``--base``, or the folder named in adapter_config.json), so the adapter is what one ships.
"""

from __future__ import annotations

from pathlib import Path

from modelcycle import runs
from modelcycle.errors import UserError
from modelcycle.lm.end_of_turn import package_record, stop_at
from modelcycle.lm.load import adapter_base, merge_adapter
from modelcycle.lm.model import ADAPTER, package_writer
from modelcycle.models.hf import has_tokenizer, load_tokenizer
from modelcycle.models.hub import local_folder


def adapter_folder(source: Path) -> Path:
    source = local_folder(source)  # a peft adapter downloaded to the Hugging Face cache, by its id
    for folder in (source, source / ADAPTER, source / "model" / ADAPTER):
        if (folder / "adapter_config.json").is_file():
            return folder
    raise UserError(
        f"{source} holds no LoRA adapter (adapter_config.json, nor adapter/ or model/adapter/); "
        "pass a run trained with lora.r=8 (or its model/ package, or a peft adapter folder)"
    )


def merge(source: str | Path, out: str | Path, task: str, base: str | Path | None = None) -> dict:
    """Write ``out`` as a plain LM package: base weights + the adapter's update; returns its manifest.
    It records the source package's task, or ``task`` for a bare peft adapter that records none."""
    source, out = Path(source), Path(out)
    adapter = adapter_folder(source)
    package = adapter.parent if adapter.name == ADAPTER else adapter
    manifest = runs.read_manifest(package) if (package / runs.MANIFEST).is_file() else {}
    base_folder = adapter_base(adapter, base)
    model = merge_adapter(adapter, base=base_folder)
    # the package's tokenizer, else the adapter's, else (peft saves none) the base model's
    tokenizer_from = next((f for f in (package, adapter) if has_tokenizer(f)), base_folder)
    tokenizer = load_tokenizer(tokenizer_from)
    tuning = {**manifest.get("fine_tuning", {}), "adapter": None, "merged_from": str(adapter.resolve())}
    # the source package's end of turn (its run's lm.end_of_turn, or its template's), else the template's;
    # the base model's generation_config.json (written with the package) stops there too, as the source's does
    end_of_turn = package_record(manifest, tokenizer)
    if end_of_turn is not None:
        stop_at(model.generation_config, end_of_turn["id"])
    record = {
        "task": manifest.get("task", task),
        "backend": "transformers",
        "layout": "transformers",
        "architecture": manifest.get("architecture", {"class": type(model).__name__}),
        "lm": manifest.get("lm", {}),
        "fine_tuning": tuning,
        "metrics": manifest.get("metrics", {}),
        "source_run": manifest.get("source_run"),
        "source_package": str(package.resolve()),
        "end_of_turn": end_of_turn,
    }
    # in the base model's dtypes (a bf16 base gives a bf16 package), tied weights once
    package_writer(model, tokenizer, base_folder)(out, model.state_dict(), record)
    return runs.read_manifest(out)
