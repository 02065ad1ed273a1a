"""Which files under the runs folder the dashboard hands out, and how.

A path comes from the URL, so it is hostile until proven otherwise: absolute paths, ``..``
parts, NUL bytes and anything whose real location (symlinks followed) lies outside the runs
folder are refused, and only the kinds of file a run writes for people to read (reports, plots,
text records) are served: no checkpoints, weights or databases, which are big and not for a page.
HTML is served with a sandboxing Content-Security-Policy, so a report page (or any HTML someone
dropped in a run folder) shows but runs no script with the dashboard's rights.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from fastapi import HTTPException
from fastapi.responses import FileResponse

MEDIA = {
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".svg": "image/svg+xml",
    ".md": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".log": "text/plain; charset=utf-8",
    ".yaml": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".jsonl": "text/plain; charset=utf-8",
    ".csv": "text/plain; charset=utf-8",
}
# no script, no form, no fetch; the report's own inline styles and its images (from the run folder) only
SANDBOX = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"


def inside(root: Path, relative: str) -> Path:
    """``root / relative`` with symlinks resolved, or an HTTP error: 400 for a path that is not a
    plain relative one, 403 for one that leads outside ``root``, 404 for none there."""
    parts = PurePosixPath(relative).parts
    if not relative or "\0" in relative or "\\" in relative or relative.startswith("/") or ".." in parts:
        raise HTTPException(400, f"{relative!r}: give a path relative to the runs folder, without '..'")
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):  # a symlink somewhere on the way points out of the runs folder
        raise HTTPException(403, f"{relative}: leads outside the runs folder; the dashboard serves nothing there")
    if not target.exists():
        raise HTTPException(404, f"{relative}: no such file in the runs folder")
    return target


def served_file(root: Path, relative: str) -> FileResponse:
    """A report, plot or text file of the runs folder, read-only."""
    target = inside(root, relative)
    media = MEDIA.get(target.suffix.lower())
    if not target.is_file():
        raise HTTPException(404, f"{relative}: not a file")
    if media is None:
        kinds = ", ".join(sorted(MEDIA))
        raise HTTPException(403, f"{relative}: the dashboard serves reports, plots and text files only ({kinds})")
    headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
    if target.suffix.lower() in (".html", ".svg"):
        headers["Content-Security-Policy"] = SANDBOX
    return FileResponse(target, media_type=media, headers=headers)
