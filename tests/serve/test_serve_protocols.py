"""Which protocols a package gets: its task plugin says so for our packages, the files for a
foreign folder; each protocol module loads what it serves (issue 15)."""

from __future__ import annotations

import json

import pytest

from modelcycle.errors import UserError
from modelcycle.packages import CAUSAL, SEQUENCE, VISION, Package
from modelcycle.serve import protocols
from modelcycle.serve.protocols import score
from modelcycle.tasks.plugin import TaskPlugin


def ours(tmp_path, task: str, kind: str = VISION) -> Package:
    return Package(tmp_path, {"task": task}, kind)


def test_our_packages_get_what_their_plugin_declares(tmp_path):
    assert protocols.for_package(ours(tmp_path, "classify")) == ("predict_v1", "kserve_v2")
    assert protocols.for_package(ours(tmp_path, "text_classify", SEQUENCE)) == ("predict_v1", "kserve_v2")
    assert protocols.for_package(ours(tmp_path, "reward", SEQUENCE)) == ("score",)
    assert protocols.for_package(ours(tmp_path, "dpo", CAUSAL)) == ("openai",)


def test_a_task_that_declares_no_protocols_is_not_served(tmp_path, monkeypatch):
    monkeypatch.setattr(protocols.registry, "for_manifest", lambda manifest: TaskPlugin(name="stub_regression"))
    with pytest.raises(UserError, match=r"'stub_regression'.*serve_protocols"):
        protocols.for_package(ours(tmp_path, "stub_regression"))


def test_a_task_no_plugin_reads_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no registered task reads"):
        protocols.for_package(ours(tmp_path, "no_such_task"))


def test_a_foreign_folder_goes_by_its_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "LABEL_0"}}))
    assert protocols.for_package(Package(tmp_path, None, SEQUENCE)) == ("score",)
    (tmp_path / "config.json").write_text(json.dumps({"id2label": {"0": "neg", "1": "pos"}}))
    assert protocols.for_package(Package(tmp_path, None, SEQUENCE)) == ("predict_v1", "kserve_v2")
    assert protocols.for_package(Package(tmp_path, None, CAUSAL)) == ("openai",)


def test_the_task_shown_comes_from_the_package(tmp_path):
    assert protocols.task_of(ours(tmp_path, "sft", CAUSAL)) == "sft"
    assert protocols.task_of(Package(tmp_path, {}, VISION)) == "classify"  # the first packages recorded none
    assert protocols.task_of(Package(tmp_path, None, SEQUENCE)) is None  # no task opens foreign classifiers


def test_the_classifier_protocols_share_one_loader():
    assert protocols.MODULES["predict_v1"].load is protocols.MODULES["kserve_v2"].load


def test_the_score_protocol_refuses_a_package_that_is_no_scorer(tmp_path):
    with pytest.raises(UserError, match="is not a reward model"):
        score.load("digits", tmp_path, ours(tmp_path, "classify"), None)
