"""Issue 14, item 6: a model package whose architecture names a ``.py`` file must not run it
without an explicit opt-in. The file here leaves a marker when it is imported, so the tests see
whether any of it ran, not only the exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelcycle
from helpers import LINEAR_MODEL, assert_user_error, run_cli
from modelcycle.errors import UserError
from modelcycle.packages import load_model

MARKER_CODE = """
from pathlib import Path
Path(__file__).with_suffix(".ran").write_text("imported")
"""


@pytest.fixture
def code_package(tmp_path: Path, tiny_config) -> tuple[Path, Path]:
    """A trained package whose manifest names a user file that leaves ``evil.ran`` when imported."""
    user_file = tmp_path / "evil.py"
    user_file.write_text(LINEAR_MODEL + MARKER_CODE)
    config = tiny_config(model__name=f"{user_file}:build", model__args="{}", train__epochs=1)
    run = modelcycle.train(config, progress=False)
    user_file.with_suffix(".ran").unlink()  # training ran it: the user's own config named it
    return run.path / "model", user_file.with_suffix(".ran")


def test_predict_and_evaluate_refuse_a_package_that_names_code(code_package, image_folder: Path):
    package, marker = code_package
    image = next((image_folder).rglob("*.png"))
    for args in (["predict", package, image], ["evaluate", package]):
        result = run_cli(*args)
        assert_user_error(result, "names Python code", "evil.py:build", "--trust-code")
        assert not marker.exists(), f"{args[0]} imported the package's file"


def test_the_opt_in_runs_it(code_package, image_folder: Path):
    package, marker = code_package
    image = next((image_folder).rglob("*.png"))
    result = run_cli("--trust-code", "predict", package, image)
    assert result.returncode == 0, result.stderr
    assert marker.exists()


def test_python_load_model_needs_trust_code_for_a_file_this_process_never_ran(code_package, tmp_path: Path):
    """A package naming another file (as a hostile manifest would) is refused in-process too."""
    package, marker = code_package
    other = tmp_path / "other.py"
    other.write_text(LINEAR_MODEL + MARKER_CODE)
    manifest = json.loads((package / "modelcycle.json").read_text())
    manifest["architecture"]["name"] = f"{other}:build"
    (package / "modelcycle.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="names Python code"):
        load_model(package)
    assert not other.with_suffix(".ran").exists()
    model, _ = load_model(package, trust_code=True)
    assert other.with_suffix(".ran").exists() and model is not None
