"""Where language-model data comes from: files and folders, and the records each holds with its
place, whatever the container.

A source is a file or a folder. Files, by suffix:

* ``.jsonl``: one JSON value a line;
* ``.json``: an array of records (LLaMA-Factory's files), or JSON lines under a ``.json`` name
  (what ``datasets``' ``to_json`` writes);
* ``.parquet``: Parquet, read with pyarrow;
* ``.arrow``: an Arrow stream, the files ``datasets.save_to_disk`` writes;
* ``.txt``: text, documents separated by a blank line.

A file named with another suffix is read by its first character: ``{`` JSON lines, ``[`` a JSON
array, anything else text. A folder is the dataset ``datasets.save_to_disk`` wrote (its
``state.json`` names the ``.arrow`` files), or else every data file in it with one of the suffixes
above (and every save_to_disk folder in it), in name order.

Records are streamed with their place (a line for JSON and text, a row for Parquet and Arrow,
``ds[i]``'s index), never loaded whole twice: a JSON array is decoded element by element from a
growing buffer, Parquet and Arrow batch by batch.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelcycle.data.text import json_records
from modelcycle.errors import DataError

CONTAINERS = {".jsonl": "JSONL", ".json": "JSON", ".parquet": "Parquet", ".arrow": "Arrow", ".txt": "text"}
SAVED = "datasets.save_to_disk folder"
CHUNK = 1 << 20  # characters read at a time from a JSON array


@dataclass(frozen=True)
class DataFile:
    path: Path  # a file, or a save_to_disk folder
    container: str  # JSONL, JSON array, Parquet, Arrow, text, or SAVED
    files: tuple[Path, ...] = ()  # a save_to_disk folder's Arrow files

    @property
    def unit(self) -> str:
        return "line" if self.container in ("JSONL", "JSON array", "text") else "row"

    @property
    def described(self) -> str:
        return {"JSON array": "a JSON array", "Arrow": "an Arrow file", SAVED: f"a {SAVED}"}.get(
            self.container, f"a {self.container} file"
        )

    def where(self, number: int) -> str:
        return f"{self.path}:{number}" if self.unit == "line" else f"{self.path} row {number}"


def data_files(source: str | Path) -> list[DataFile]:
    """The data files a source names: the file itself, or a folder's."""
    path = Path(source)
    if path.is_file():
        return [_file(path, sniff=True)]
    if not path.is_dir():
        raise DataError(f"{path} does not exist; name data files or folders (docs/lm.md lists the formats)")
    if (path / "dataset_dict.json").is_file():
        splits = _json(path / "dataset_dict.json").get("splits", [])
        raise DataError(
            f"{path} is a DatasetDict written by datasets' save_to_disk, with the splits {', '.join(splits)}; "
            f"name one split's folder, e.g. {path / (splits[0] if splits else 'train')}"
        )
    if (path / "state.json").is_file():
        return [_saved(path)]
    found = [
        _file(p, sniff=False) if p.is_file() else _saved(p)
        for p in sorted(path.iterdir())
        if not p.name.startswith(".")
        and ((p.is_file() and p.suffix in CONTAINERS) or (p.is_dir() and (p / "state.json").is_file()))
    ]
    if not found:
        raise DataError(f"{path} holds no data files ({', '.join(CONTAINERS)} or save_to_disk folders)")
    return found


def _file(path: Path, sniff: bool) -> DataFile:
    container = CONTAINERS.get(path.suffix)
    if container == "Arrow":
        return DataFile(path, "Arrow", (path,))
    if container in ("JSON", None) and (container or sniff):
        first = _first_character(path)
        container = "JSON array" if first == "[" else "JSONL" if first == "{" or container else "text"
    return DataFile(path, container)


def _first_character(path: Path) -> str:
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        while chunk := handle.read(4096):
            if stripped := chunk.lstrip():
                return stripped[0]
    return ""


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: not a JSON object")
    return value


def _saved(folder: Path) -> DataFile:
    state = _json(folder / "state.json")
    names = [entry.get("filename") for entry in state.get("_data_files") or [] if isinstance(entry, dict)]
    if not names or not all(isinstance(n, str) and (folder / n).is_file() for n in names):
        raise DataError(f"{folder / 'state.json'} names no Arrow files that are there; save the dataset again")
    if state.get("_indices_data_files"):
        raise DataError(
            f"{folder} keeps an indices mapping (an old datasets version's save_to_disk after select or "
            "shuffle); load it and save it again with datasets 2 or later, which writes the rows themselves"
        )
    return DataFile(folder, SAVED, tuple(folder / n for n in names))


def records(file: DataFile, problems: list[str]) -> Iterator[tuple[int, object]]:
    """(line or row, record) for each record of the file; a line that is not UTF-8 or not JSON is
    added to ``problems`` as ``file:line: what`` and skipped, so a caller reports them all."""
    if file.container == "JSONL":
        yield from json_records(file.path, problems)
    elif file.container == "JSON array":
        yield from _json_array(file.path, problems)
    elif file.container == "text":
        yield from _documents(file.path)
    elif file.container == "Parquet":
        yield from _parquet(file.path)
    else:
        yield from _arrow(file)


def _documents(path: Path) -> Iterator[tuple[int, dict]]:
    """``{"text": document}`` at the line it starts: documents are separated by blank lines."""
    lines: list[str] = []
    start = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                start = start or number
                lines.append(line)
            elif lines:
                yield start, {"text": "".join(lines).strip()}
                lines, start = [], 0
    if lines:
        yield start, {"text": "".join(lines).strip()}


def _json_array(path: Path, problems: list[str]) -> Iterator[tuple[int, object]]:
    """The elements of a JSON array with the line each starts on, decoded one at a time."""
    decoder = json.JSONDecoder()
    try:
        handle = open(path, encoding="utf-8-sig")  # noqa: SIM115 (closed below; a generator)
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror}") from None
    with handle:
        buffer, position, line, counted, ended = "", 0, 1, 0, False

        def more() -> bool:
            nonlocal buffer, position, line, counted, ended
            line += buffer.count("\n", counted, position)  # drop what is decoded, keep counting lines
            buffer, counted = buffer[position:], 0
            position = 0
            try:
                chunk = handle.read(max(CHUNK, len(buffer)))  # doubling: a long record costs linear time
            except UnicodeDecodeError:
                raise DataError(f"{path}: not UTF-8 text after line {line}; save the file as UTF-8") from None
            buffer += chunk
            ended = not chunk
            return bool(chunk)

        def skip(expected: str) -> str | None:
            """Past whitespace, the next character if it is one of ``expected``."""
            nonlocal position
            while True:
                while position < len(buffer) and buffer[position].isspace():
                    position += 1
                if position < len(buffer):
                    char = buffer[position]
                    if char in expected:
                        position += 1
                        return char
                    return None
                if not more():
                    return None

        def here() -> int:
            nonlocal line, counted
            line += buffer.count("\n", counted, position)
            counted = position
            return line

        if skip("[") is None:
            problems.append(f"{path}:{here()}: not a JSON array")
            return
        if skip("]"):
            return
        while True:
            skip("")
            start = here()
            while True:
                try:
                    value, end = decoder.raw_decode(buffer, position)
                    if end < len(buffer) or ended:  # a value cut at the buffer's end may go on
                        break
                except json.JSONDecodeError as exc:
                    if ended:
                        where = start + buffer.count("\n", position, exc.pos)
                        problems.append(f"{path}:{where}: not valid JSON ({exc.msg}); the rest of the array is unread")
                        return
                more()
            position = end
            yield start, value
            separator = skip(",]")
            if separator == "]":
                return
            if separator is None:
                problems.append(f"{path}:{here()}: not valid JSON (expected ',' or ']' after a record)")
                return


def _pyarrow(module: str, path: Path, what: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{path}: reading {what} needs pyarrow, which is not installed (pip install pyarrow)") from None


def _rows(batches) -> Iterator[dict]:
    for batch in batches:
        yield from batch.to_pylist()


def _parquet(path: Path) -> Iterator[tuple[int, dict]]:
    pq = _pyarrow("pyarrow.parquet", path, "Parquet")
    try:
        handle = pq.ParquetFile(path)
        yield from enumerate(_rows(handle.iter_batches(batch_size=256)))
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None


def _arrow(file: DataFile) -> Iterator[tuple[int, dict]]:
    pa = _pyarrow("pyarrow", file.path, "Arrow")
    index = 0
    for part in file.files:
        try:
            with pa.memory_map(str(part)) as source:
                try:
                    batches = pa.ipc.open_stream(source)  # what save_to_disk writes
                except pa.ArrowInvalid:
                    source.seek(0)
                    reader = pa.ipc.open_file(source)
                    batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
                for row in _rows(batches):
                    yield index, row
                    index += 1
        except (OSError, ValueError) as exc:
            raise DataError(f"{part}: not a readable Arrow file ({exc})") from None
