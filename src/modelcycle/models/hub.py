"""Hugging Face Hub ids (``Qwen/Qwen2.5-0.5B-Instruct``) resolved offline, from the local cache.

A model downloaded with ``hf download ID`` (or ``huggingface-cli download ID``, or any
``from_pretrained(ID)`` on a machine with network) lies in the cache as
``models--OWNER--NAME/snapshots/COMMIT/``, with ``refs/main`` naming the commit. An id given where
a folder is expected (``model.name``, ``model.init_from``, ``modelcycle lm generate ID``, an
adapter's ``base_model_name_or_path``) is looked up there and used as that snapshot folder.

Nothing here reaches the network: ``snapshot_download(..., local_files_only=True)`` only reads
the cache, and a model missing from it is a ``UserError`` that says how to bring it in. The cache
is found as huggingface_hub finds it (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``), read from the environment at each call, so a variable set after
import counts.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from modelcycle.errors import UserError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub reads it; every load also passes local_files_only

# OWNER/NAME, optionally @REVISION (a branch, tag or commit); the Hub's own character rules
_HUB_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?")


def cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it, read now."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_id(path: str | Path) -> str | None:
    """``path`` as a Hub id when it could be one (``owner/name`` or ``owner/name@revision``) and
    is no path here (neither it nor its first part exists: ``runs/NAME`` with a ``runs/`` folder
    here is a path that does not exist, not a model id); else None."""
    text = str(path)
    if not _HUB_ID.fullmatch(text) or Path(text).exists() or Path(text.split("/")[0]).is_dir():
        return None
    return text


def snapshot(repo: str) -> Path:
    """The cached snapshot folder of the Hub model ``repo`` (``owner/name[@revision]``), or a
    UserError that says how to download it on a machine with network."""
    from huggingface_hub import errors, snapshot_download

    match = _HUB_ID.fullmatch(repo)
    if match is None:
        raise UserError(f"{repo!r} is not a Hugging Face model id (owner/name, e.g. Qwen/Qwen2.5-0.5B-Instruct)")
    name, revision = match["repo"], match["revision"]
    cache = cache_dir()
    try:
        folder = snapshot_download(name, revision=revision, cache_dir=cache, local_files_only=True)
    except (errors.LocalEntryNotFoundError, errors.HFValidationError, OSError) as exc:
        incomplete = isinstance(exc, getattr(errors, "IncompleteSnapshotError", ()))
        raise UserError(missing_message(repo, cache, incomplete)) from None
    return Path(folder)


def missing_message(repo: str, cache: Path, incomplete: bool = False) -> str:
    name = repo.split("@")[0]
    revision = f" --revision {repo.split('@', 1)[1]}" if "@" in repo else ""
    what = (
        f"the Hugging Face cache ({cache}) holds an incomplete download of {repo}"
        if incomplete
        else f"the Hugging Face cache ({cache}) holds no snapshot of the model {repo}"
    )
    return (
        f"{repo} is not a folder here, and {what}; modelcycle never downloads. On a machine with network run "
        f"`hf download {name}{revision}` (or `huggingface-cli download {name}{revision}`), then copy its "
        f"models--{name.replace('/', '--')} folder into {cache}, or set HF_HUB_CACHE (or HF_HOME) to a cache that "
        "holds it; or pass the model's folder"
    )


def local_folder(path: str | Path) -> Path:
    """``path`` itself, or the cached snapshot when it is a Hub id and no such path exists."""
    repo = hub_id(path)
    return snapshot(repo) if repo else Path(path)


def cached_repo(folder: Path) -> str | None:
    """``owner/name`` when ``folder`` is a snapshot in a Hugging Face cache
    (``models--owner--name/snapshots/COMMIT``), else None."""
    folder = Path(folder).resolve()
    repo = folder.parent.parent.name
    if folder.parent.name != "snapshots" or not repo.startswith("models--") or repo.count("--") != 2:
        return None
    return repo.removeprefix("models--").replace("--", "/")


def snapshot_commit(folder: str | Path) -> str | None:
    """The commit of ``folder`` when it is a snapshot in a Hugging Face cache, else None."""
    return Path(folder).resolve().name if cached_repo(Path(folder)) else None


def recorded(path: str | Path) -> tuple[str, str | None]:
    """How a run records a folder it was given (``lm.tokenizer``): a Hub id as the id (the
    cache's absolute path would exist on this machine only) and the commit of the snapshot it
    opened; any other path as its absolute path, and None."""
    repo = hub_id(path)
    if repo is None:
        return str(Path(path).resolve()), None
    return repo.split("@")[0], snapshot_commit(snapshot(repo))
