"""Preference JSONL: both forms, the skipped identical pairs, and every bad line named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelcycle.data.preferences import read_pairs, unique_prompts
from modelcycle.data.pydocs_prefs import write_preference_pairs
from modelcycle.errors import DataError


def write(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_plain_and_chat_forms_read_to_the_same_pair(tmp_path):
    chat_prompt = [{"role": "user", "content": "Hi?"}]
    path = write(
        tmp_path / "p.jsonl",
        [
            {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away.", "margin": 2},
            {
                "prompt": chat_prompt,
                "chosen": [{"role": "assistant", "content": "Hello."}],
                "rejected": [{"role": "assistant", "content": "Go away."}],
            },
            {
                "chosen": chat_prompt + [{"role": "assistant", "content": "Hello."}],
                "rejected": chat_prompt + [{"role": "assistant", "content": "Go away."}],
                "id": 7,
            },
        ],
    )
    a, b, c = read_pairs(path)
    assert (a.prompt, a.chosen, a.rejected, a.margin) == ((("user", "Hi?"),), "Hello.", "Go away.", 2.0)
    assert (b.prompt, b.chosen, b.rejected) == (a.prompt, a.chosen, a.rejected)
    assert (c.prompt, c.chosen, c.rejected, c.line) == (a.prompt, a.chosen, a.rejected, 3)
    assert unique_prompts([a, b, c]) == [chat_prompt]


def test_identical_answers_are_counted_and_skipped_with_a_warning(tmp_path, capsys):
    path = write(
        tmp_path / "p.jsonl",
        [{"prompt": "q", "chosen": "same", "rejected": "same "}, {"prompt": "q", "chosen": "a", "rejected": "b"}],
    )
    assert [p.chosen for p in read_pairs(path)] == ["a"]
    assert "skipped 1 pair(s)" in capsys.readouterr().err


def test_bad_lines_are_all_reported_with_file_and_line(tmp_path):
    path = write(
        tmp_path / "p.jsonl",
        [
            {"prompt": "q", "chosen": "a", "rejected": "b"},
            "{not json",
            {"prompt": "q", "chosen": "", "rejected": "b"},
            {"prompt": "q", "chosen": "a"},
            {
                "chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}],
            },
            {"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"},
        ],
    )
    with pytest.raises(DataError) as info:
        read_pairs(path)
    text = str(info.value)
    assert f"{path}:2: not valid JSON" in text
    assert f'{path}:3: the "chosen" answer is empty' in text
    assert f'{path}:4: no "rejected" key' in text
    assert f'{path}:5: "chosen" and "rejected" differ before their last message' in text
    assert f"{path}:6: \"margin\" is 'big'" in text


def test_a_file_of_only_identical_pairs_is_refused(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "x", "rejected": "x"}])
    with pytest.raises(DataError, match="no usable preference pairs"):
        read_pairs(path)


def test_pydocs_pairs_ask_sfts_questions_split_by_topic_and_read_back(tmp_path):
    from pydoc_data.topics import topics

    from modelcycle.data.pydoc_topics import GROUPS
    from modelcycle.data.pydocs import PROMPTS, instruction_split

    chosen = {t: topics[t] for t in ("for", "while", "if", "lambda", "integers", "import", "typesseq", "comparisons")}
    sft = instruction_split(chosen, val_topics=["while", "comparisons"])
    counts = write_preference_pairs(tmp_path, sft, seed=1)
    train, val = read_pairs(tmp_path / "prefs-train.jsonl"), read_pairs(tmp_path / "prefs-val.jsonl")
    assert len(train) == sum(counts["train"].values()) and len(val) == sum(counts["val"].values())
    group = {topic: g for g, names in GROUPS.items() for topic in names}
    for split in ("train", "val"):
        answer_of = {e["messages"][0]["content"]: e["messages"][1]["content"] for e in sft[split]}
        # every SFT question is asked, once with each kind of worse answer
        assert counts[split] == {"wrong_topic": len(answer_of), "shuffled": len(answer_of)}
        rows = [json.loads(line) for line in (tmp_path / f"prefs-{split}.jsonl").read_text().splitlines()]
        topic_of = {r["chosen"]: r["topic"] for r in rows}
        for row in rows:
            assert row["chosen"] == answer_of[row["prompt"]]  # the answer SFT learned for that question
            if row["kind"] == "shuffled":
                assert sorted(row["chosen"].split()) == sorted(row["rejected"].split())
                assert row["rejected"] != row["chosen"]
            else:  # another heading's answer, from another part of the language
                assert row["rejected"] in topic_of and group[topic_of[row["rejected"]]] != group[row["topic"]]
    val_rows = [json.loads(line) for line in (tmp_path / "prefs-val.jsonl").read_text().splitlines()]
    assert {r["topic"] for r in val_rows} == {"while", "comparisons"}
    assert len({r["prompt"] for r in val_rows}) > len(PROMPTS)  # several headings, several phrasings each
    train_text = {p.chosen for p in train} | {p.rejected for p in train}
    assert not train_text & ({p.chosen for p in val} | {p.rejected for p in val})
