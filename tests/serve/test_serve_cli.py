"""`modelcycle serve` refuses bad set-ups before it binds a port, with errors that say what to do."""

from __future__ import annotations

from helpers import assert_user_error, run_cli, tampered_copy


def test_typo_in_a_serve_setting_names_the_right_key(trained):
    assert_user_error(run_cli("serve", trained, "serve.max_batch=8"), "serve.max_batch", "serve.max_batch_size")


def test_missing_or_duplicate_models(trained, tmp_path):
    assert_user_error(run_cli("serve", tmp_path / "nothing"), "nothing")
    assert_user_error(run_cli("serve", trained, trained), "two models are named", "shapes")
    assert_user_error(run_cli("serve", "serve.port=0"), "no model to serve")


def test_a_tampered_package_is_refused(trained, tmp_path):
    copy = tampered_copy(trained / "model", tmp_path / "copy")
    assert_user_error(run_cli("serve", copy, "--port", "0"), "sha256")


def test_a_port_in_use_is_a_clear_error(trained):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert_user_error(run_cli("serve", trained, "--port", str(port)), f"127.0.0.1:{port}", "--port")
