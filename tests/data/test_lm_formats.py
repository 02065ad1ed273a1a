"""The data formats people bring (issue 16, item 3): one small file per format, written here, read
by every stage that takes it into exactly the records the stages use; the same records from a
JSON array, Parquet and a ``datasets.save_to_disk`` folder; a malformed file per format refused
with its file, line (or row) and the format it looked like; and short runs end to end (SFT on an
Alpaca JSON array and on ShareGPT Parquet, DPO and a reward model on TRL pairs with an implicit
prompt, PPO's prompts from prompt-only records)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from modelcycle.data import sources
from modelcycle.data.formats import read_conversations, read_documents, read_pairs, read_prompts
from modelcycle.data.preferences import Pair, open_pairs
from modelcycle.errors import ConfigError, DataError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "Answer in one line."}
TOOL_CHAT = [SYSTEM, user("What is 6 x 7?"), assistant("Let me compute."), {"role": "tool", "content": "42"}]
TOOL_CHAT += [assistant("It is 42.")]
PAIR = Pair(((("user", "Sky colour?"),)), "Blue.", "Green.", None, 1)

# format -> (records, what each stage reads of them); a stage left out refuses the format
FORMATS = {
    "text": ([{"text": "A document."}], {"documents": ["A document."]}),
    "chat messages": (
        [{"messages": TOOL_CHAT}],
        {"conversations": [TOOL_CHAT], "prompts": [TOOL_CHAT[:4]]},
    ),
    "Alpaca": (
        [
            {
                "instruction": "Add",
                "input": "1 and 2",
                "output": "3",
                "system": "Be terse.",
                "history": [["Hi", "Hello."]],
            },
        ],
        {
            "conversations": [
                [
                    {"role": "system", "content": "Be terse."},
                    user("Hi"),
                    assistant("Hello."),
                    user("Add\n\n1 and 2"),
                    assistant("3"),
                ]
            ],
            "prompts": [
                [{"role": "system", "content": "Be terse."}, user("Hi"), assistant("Hello."), user("Add\n\n1 and 2")]
            ],
        },
    ),
    "ShareGPT": (
        [
            {
                "conversations": [
                    {"from": "system", "value": "Answer in one line."},
                    {"from": "human", "value": "Hi?"},
                    {"from": "gpt", "value": "Hello."},
                ]
            }
        ],
        {"conversations": [[SYSTEM, user("Hi?"), assistant("Hello.")]], "prompts": [[SYSTEM, user("Hi?")]]},
    ),
    "prompt/completion": (
        [{"prompt": "Hi?", "completion": "Hello."}],
        {"conversations": [[user("Hi?"), assistant("Hello.")]], "prompts": [[user("Hi?")]]},
    ),
    "prompt/completion messages": (
        [{"prompt": [SYSTEM, user("Hi?")], "completion": [assistant("Hello.")]}],
        {"conversations": [[SYSTEM, user("Hi?"), assistant("Hello.")]], "prompts": [[SYSTEM, user("Hi?")]]},
    ),
    "prompt-only": ([{"prompt": "Sky colour?"}], {"prompts": [[user("Sky colour?")]]}),
    "prompt-only messages": ([{"prompt": [SYSTEM, user("Hi?")]}], {"prompts": [[SYSTEM, user("Hi?")]]}),
    "prompt/chosen/rejected": (
        [{"prompt": "Sky colour?", "chosen": "Blue.", "rejected": "Green."}],
        {"pairs": [PAIR], "prompts": [[user("Sky colour?")]]},
    ),
    "prompt/chosen/rejected messages": (
        [{"prompt": [user("Sky colour?")], "chosen": [assistant("Blue.")], "rejected": [assistant("Green.")]}],
        {"pairs": [PAIR], "prompts": [[user("Sky colour?")]]},
    ),
    "implicit prompt": (
        [{"chosen": [user("Sky colour?"), assistant("Blue.")], "rejected": [user("Sky colour?"), assistant("Green.")]}],
        {"pairs": [PAIR], "prompts": [[user("Sky colour?")]]},
    ),
    "ShareGPT pairs": (
        [
            {
                "conversations": [{"from": "human", "value": "Sky colour?"}],
                "chosen": {"from": "gpt", "value": "Blue."},
                "rejected": {"from": "gpt", "value": "Green."},
            }
        ],
        {"pairs": [PAIR], "prompts": [[user("Sky colour?")]]},
    ),
    "Alpaca pairs": (
        [{"instruction": "Sky colour?", "input": "", "chosen": "Blue.", "rejected": "Green."}],
        {"pairs": [PAIR], "prompts": [[user("Sky colour?")]]},
    ),
}

# format -> (a file's records, the bad line (1-based record number), words its error names)
MALFORMED = {
    "text": ([{"text": "fine"}, {"text": ""}], 2, ['no non-empty "text"', "text (text)"]),
    "chat messages": (
        [{"messages": TOOL_CHAT}, {"messages": [user("only a question")]}],
        2,
        ["no assistant turn", "chat messages (messages)"],
    ),
    "Alpaca": (
        [{"instruction": "Add", "output": "3"}, {"instruction": "Add", "input": "1"}],
        2,
        ['no non-empty "output"', "Alpaca (instruction/input/output)"],
    ),
    "ShareGPT": (
        [FORMATS["ShareGPT"][0][0], {"conversations": [{"from": "robot", "value": "beep"}]}],
        2,
        ["the role 'robot'", "ShareGPT (conversations)"],
    ),
    "prompt/completion": (
        [{"prompt": "Hi?", "completion": "Hello."}, {"prompt": "Hi?", "completion": [assistant("Hello.")]}],
        2,
        ["both be strings or both be message lists", "prompt/completion (prompt/completion)"],
    ),
    "prompt-only": (
        [{"prompt": "Hi?"}, {"prompt": [user("Hi?"), assistant("Hello.")]}],
        2,
        ["ends with an assistant message", "prompt-only (prompt)"],
    ),
    "prompt/chosen/rejected": (
        [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}],
        2,
        ['no "rejected" key', "prompt/chosen/rejected"],
    ),
    "implicit prompt": (
        [
            FORMATS["implicit prompt"][0][0],
            {"chosen": [user("x"), assistant("a")], "rejected": [user("y"), assistant("b")]},
        ],
        2,
        ["differ before their last message", "prompt/chosen/rejected"],
    ),
    "ShareGPT pairs": (
        [
            FORMATS["ShareGPT pairs"][0][0],
            {**FORMATS["ShareGPT pairs"][0][0], "rejected": {"from": "human", "value": "?"}},
        ],
        2,
        ["one answer of the assistant", "ShareGPT pairs"],
    ),
    "Alpaca pairs": (
        [FORMATS["Alpaca pairs"][0][0], {"instruction": "q", "chosen": "a", "rejected": ""}],
        2,
        ['the "rejected" answer is empty', "Alpaca pairs"],
    ),
}

READERS = {
    "documents": read_documents,
    "conversations": read_conversations,
    "pairs": read_pairs,
    "prompts": lambda path: read_prompts([path]),
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def write_array(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows, indent=2))  # one key a line: records start on lines 2, 2 + n, ...
    return path


def table(rows: list):
    """Rows as an Arrow table with every row's columns (a key a row lacks is null there, as in
    any Parquet file; ``from_pylist`` alone would keep the first row's keys only)."""
    keys = list(dict.fromkeys(key for row in rows for key in row))
    return pa.Table.from_pylist([{key: row.get(key) for key in keys} for row in rows])


def write_parquet(path: Path, rows: list) -> Path:
    pq.write_table(table(rows), path)
    return path


def write_saved(folder: Path, rows: list, shards: int = 1) -> Path:
    """The folder ``datasets.Dataset.from_list(rows).save_to_disk(folder)`` writes: Arrow stream
    files named in state.json, beside dataset_info.json."""
    folder.mkdir(parents=True)
    data = table(rows)
    size = -(-len(rows) // shards)
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    for i, name in enumerate(names):
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, data.schema) as writer:
            writer.write_table(data.slice(i * size, size))
    state = {
        "_data_files": [{"filename": n} for n in names],
        "_fingerprint": "0" * 16,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    (folder / "state.json").write_text(json.dumps(state))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))
    return folder


@pytest.mark.parametrize("name", FORMATS)
def test_each_format_is_read_by_every_stage_that_takes_it(name, tmp_path, capsys):
    records, wanted = FORMATS[name]
    path = write_jsonl(tmp_path / "data.jsonl", records)
    for stage, read in READERS.items():
        if stage in wanted:
            assert read(path) == wanted[stage], stage
        else:
            with pytest.raises(DataError, match=rf"{re.escape(str(path))}:1: a .* record .*: data for .*, not for"):
                read(path)
    printed = capsys.readouterr().err
    assert f"{path}: 1 " in printed and "(JSONL; " in printed


@pytest.mark.parametrize("name", MALFORMED)
def test_a_malformed_file_of_each_format_names_file_line_and_format(name, tmp_path):
    records, line, words = MALFORMED[name]
    stage = next(iter(FORMATS[name][1]))
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(DataError) as caught:
        READERS[stage](path)
    text = str(caught.value)
    assert f"{path}:{line}: " in text and "looks like" in text, text
    for word in words:
        assert word in text, (word, text)
    # the same records as a JSON array name the line the record starts on, in Parquet its row
    array = write_array(tmp_path / "bad.json", records)
    with pytest.raises(DataError, match=r"bad\.json:\d+: .*\n"):
        READERS[stage](array)
    try:
        parquet = write_parquet(tmp_path / "bad.parquet", records)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # one type a column: a string and a list do not mix
        return
    with pytest.raises(DataError, match=rf"{re.escape(str(parquet))} row {line - 1}: "):
        READERS[stage](parquet)


CONTAINER_ROWS = [
    {"instruction": "Add", "input": "1 and 2", "output": "3"},
    {"instruction": "Greet", "output": "Hello.", "system": "Be kind.", "history": [["Hi", "Hey."]]},
]


@pytest.mark.parametrize("container", ["JSON array", "Parquet", "save_to_disk", "datasets", "folder"])
def test_every_container_gives_the_same_records(container, tmp_path, capsys):
    expected = read_conversations(write_jsonl(tmp_path / "ref.jsonl", CONTAINER_ROWS))
    if container == "JSON array":
        path = write_array(tmp_path / "alpaca.json", CONTAINER_ROWS)
    elif container == "Parquet":  # the first row's missing keys are nulls in Parquet: read as absent
        path = write_parquet(tmp_path / "alpaca.parquet", CONTAINER_ROWS)
    elif container == "save_to_disk":
        path = write_saved(tmp_path / "saved", CONTAINER_ROWS, shards=2)
    elif container == "datasets":
        datasets = pytest.importorskip("datasets")
        path = tmp_path / "saved"
        # from_dict over every key: from_list keeps only the first row's keys (system, history dropped)
        keys = sorted({key for row in CONTAINER_ROWS for key in row})
        columns = {key: [row.get(key) for row in CONTAINER_ROWS] for key in keys}
        datasets.Dataset.from_dict(columns).save_to_disk(str(path))
    else:
        path = tmp_path / "folder"
        path.mkdir()
        write_jsonl(path / "a.jsonl", CONTAINER_ROWS[:1])
        write_parquet(path / "b.parquet", CONTAINER_ROWS[1:])
        (path / "README.md").write_text("not data")
    capsys.readouterr()
    assert read_conversations(path) == expected
    printed = capsys.readouterr().err
    assert "Alpaca" in printed and str(path) in printed


def test_a_datasetdict_folder_asks_for_a_split_and_an_empty_folder_is_refused(tmp_path):
    root = tmp_path / "dd"
    write_saved(root / "train", CONTAINER_ROWS)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    with pytest.raises(DataError, match=r"DatasetDict .* splits train, test; name one split's folder"):
        read_conversations(root)
    assert len(read_conversations(root / "train")) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no data files"):
        read_conversations(tmp_path / "empty")


def test_a_json_array_is_streamed_with_the_line_each_record_starts_on(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CHUNK", 5)  # records cross many buffer refills
    rows = [{"text": "line\n" * i + "é"} for i in range(1, 6)] + [{"body": "no text"}]
    path = write_array(tmp_path / "docs.json", rows)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:17: fits no data format \(keys: body\)"):
        read_documents(path)
    path.write_text('[{"text": "a"},\n {"text": "b",}\n]')
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: not valid JSON"):
        read_documents(path)
    path.write_text('[{"text": "a"}, {"text": "b"}]')
    assert read_documents(path) == ["a", "b"]


def test_text_files_and_unnamed_files_keep_their_old_reading(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("First doc\nsecond line\n\n  \n\nSecond doc\n")
    assert read_documents(corpus) == ["First doc\nsecond line", "Second doc"]
    plain = tmp_path / "corpus"  # no suffix: text unless it opens like JSON
    plain.write_text("A document.\n")
    assert read_documents(plain) == ["A document."]
    named = write_jsonl(tmp_path / "chat.data", [{"messages": [user("Hi?"), assistant("Hello.")]}])
    assert read_conversations(named) == [[user("Hi?"), assistant("Hello.")]]


MUL = {"type": "function", "function": {"name": "mul", "description": "a times b", "parameters": {"type": "object"}}}


def tool_chat(arguments: object = '{"a": 6, "b": 7}') -> list[dict]:
    """A conversation in OpenAI's form: a call whose arguments are JSON text, its result, the answer."""
    call = {"id": "call_1", "type": "function", "function": {"name": "mul", "arguments": arguments}}
    chat = [user("6 x 7?"), {"role": "assistant", "content": None, "tool_calls": [call]}]
    return [*chat, {"role": "tool", "tool_call_id": "call_1", "content": "42"}, assistant("42.")]


def test_tool_calls_and_tools_are_read_for_sft(tmp_path):
    path = write_jsonl(tmp_path / "tools.jsonl", [{"messages": tool_chat(), "tools": [MUL]}])
    [read] = read_conversations(path)
    call = {"type": "function", "function": {"name": "mul", "arguments": {"a": 6, "b": 7}}, "id": "call_1"}
    assert read[1] == {"role": "assistant", "content": "", "tool_calls": [call]}  # arguments: an object
    assert read[2] == {"role": "tool", "content": "42", "tool_call_id": "call_1"}
    assert (read.tools, read.where) == ([MUL], f"{path}:1")  # for the template, and for errors found later
    # LLaMA-Factory's ShareGPT: function_call and observation turns, "tools" as JSON text of bare functions
    turns = [{"from": "human", "value": "6 x 7?"}, {"from": "function_call", "value": json.dumps(call["function"])}]
    turns += [{"from": "observation", "value": "42"}, {"from": "gpt", "value": "42."}]
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": turns, "tools": json.dumps([MUL["function"]])}])
    [shared] = read_conversations(path)
    assert shared.tools == [MUL] and shared[1]["tool_calls"] == [{"type": "function", "function": call["function"]}]


def test_tool_calls_are_refused_with_their_line_where_they_are_not_trained(tmp_path):
    """PPO prompts and preference pairs are read as text: a call there, or "tools", is refused
    with its line and why, as is a malformed call or definition in SFT data."""
    path = write_jsonl(tmp_path / "ppo.jsonl", [{"messages": TOOL_CHAT}, {"messages": tool_chat()}])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: an assistant turn calls a tool .*SFT trains"):
        read_prompts([path])
    path = write_jsonl(tmp_path / "prompt.jsonl", [{"prompt": "6 x 7?", "tools": [MUL]}])
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:1: \"tools\" .* SFT conversations only"):
        read_prompts([path])
    pairs = [
        {"prompt": "6 x 7?", "chosen": "42.", "rejected": "41.", "tools": [MUL]},
        {"chosen": tool_chat()[:2], "rejected": [user("6 x 7?"), assistant("41.")]},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    with pytest.raises(DataError) as refused:
        read_pairs(path)
    assert re.search(rf"{re.escape(str(path))}:1: \"tools\" .* SFT conversations only", str(refused.value))
    assert re.search(rf"{re.escape(str(path))}:2: .*tool_calls; preference pairs are read as text", str(refused.value))
    bad = [
        {"messages": tool_chat("{not json")},
        {"messages": tool_chat("[6, 7]")},
        {"messages": tool_chat(), "tools": [{"type": "function", "function": {"description": "no name"}}]},
        {"messages": tool_chat(), "tools": "[not json"},
        {"messages": [user("6 x 7?"), {"role": "assistant", "content": None, "tool_calls": []}]},
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", bad)
    with pytest.raises(DataError) as refused:
        read_conversations(path)
    for line, problem in enumerate(
        (
            'the call\'s "arguments" string is not JSON',
            'a call\'s "arguments" must be a JSON object',
            '"tools"[0] is not a tool definition',
            'the "tools" string is not JSON',
            '"tool_calls" must be a non-empty list',
        ),
        1,
    ):
        assert re.search(rf"{re.escape(str(path))}:{line}: [^\n]*{re.escape(problem)}", str(refused.value))


def test_preference_file_lists_and_folders(tmp_path):
    train = write_parquet(tmp_path / "train.parquet", FORMATS["implicit prompt"][0] * 3)
    val = write_array(tmp_path / "val.json", FORMATS["Alpaca pairs"][0])
    pairs, held_out = open_pairs(None, [str(train)], [str(val)])
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs + held_out] == [(PAIR.prompt, "Blue.", "Green.")] * 4
    assert [p.line for p in pairs] == [0, 1, 2]  # Parquet rows
    folder = tmp_path / "prefs"
    folder.mkdir()
    write_jsonl(folder / "prefs-train.jsonl", FORMATS["prompt/chosen/rejected"][0])
    assert open_pairs(folder)[1] is None
    with pytest.raises(ConfigError, match="not both"):
        open_pairs(folder, [str(train)])
    with pytest.raises(ConfigError, match="data.root is not set, nor data.train_files"):
        open_pairs(None, [], [])
