"""The dashboard's HTTP API over real run folders: the runs table, report files, what is refused
(paths out of the runs folder, files that are not reports), the live stream of metrics.jsonl,
studies, drift windows and the API key."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from conftest import UiServer, epoch_line


def get(ui, path: str, **kwargs) -> httpx.Response:
    return httpx.get(ui.url + path, timeout=30, **kwargs)


def test_the_runs_table_has_status_metrics_and_what_differs(ui, ui_runs: Path):
    body = get(ui, "/api/runs").json()
    (group,) = body["groups"]
    runs = {r["id"]: r for r in group["runs"]}
    assert {"shapes", "live", "study/trial-0000"} <= set(runs)
    shapes, live = runs["shapes"], runs["live"]
    assert shapes["status"] == "finished" and shapes["ended"] and shapes["epochs_done"] == 4
    assert live["status"] == "running" and live["ended"] is None and live["epochs_done"] == 2
    assert group["metric"] == "val_accuracy" and isinstance(shapes["best"], float)
    assert live["differs"]["train.lr"] == "0.0123" and shapes["differs"]["train.lr"] != "0.0123"
    assert "shapes/report/report.html" in shapes["report"]
    assert "shapes/report/curves.png" in shapes["report"] and live["report"] == []


def test_report_files_are_served_read_only(ui, ui_runs: Path):
    page = get(ui, "/files/shapes/report/report.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text == (ui_runs / "shapes" / "report" / "report.html").read_text()
    assert page.headers["content-security-policy"].startswith("sandbox")  # shown, but runs no script
    png = get(ui, "/files/shapes/report/curves.png")
    assert png.headers["content-type"] == "image/png" and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert httpx.post(ui.url + "/files/shapes/report/report.html").status_code == 405


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/files/../conftest.py", 400),
        ("/files/%2e%2e/%2e%2e/etc/passwd", 400),
        ("/files/shapes/..%2F..%2Fetc%2Fpasswd", 400),
        ("/files//etc/passwd", 400),  # absolute
        ("/files/shapes/checkpoints/last.pt", 403),  # not a report: weights are not for a page
        ("/files/shapes/no-such.png", 404),
    ],
)
def test_paths_out_of_the_runs_folder_are_refused(ui, path: str, status: int):
    connection = http.client.HTTPConnection(ui.url.removeprefix("http://"), timeout=30)
    connection.request("GET", path)  # sent as written: an HTTP client library would drop the dots
    response = connection.getresponse()
    text = response.read().decode()
    assert response.status == status, text
    assert "root:" not in text and json.loads(text)["error"]


def test_a_symlink_out_of_the_runs_folder_is_refused(ui, ui_runs: Path, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the dashboard")
    (ui_runs / "shapes" / "report" / "leak.txt").symlink_to(secret)
    (ui_runs / "outside").symlink_to(tmp_path, target_is_directory=True)
    try:
        for path in ("/files/shapes/report/leak.txt", "/files/outside/secret.txt"):
            response = get(ui, path)
            assert response.status_code == 403 and "outside the runs folder" in response.json()["error"]
            assert "not for the dashboard" not in response.text
        assert get(ui, "/api/stream", params={"run": "outside"}).status_code == 403
    finally:
        (ui_runs / "shapes" / "report" / "leak.txt").unlink()
        (ui_runs / "outside").unlink()


def read_event(lines, timeout_note: str) -> dict:
    """The next ``data:`` event of an SSE stream as JSON (a reset event as {"reset": True})."""
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            return {"reset": True} if name == "reset" else json.loads(line[6:])
    raise AssertionError(f"the stream ended before {timeout_note}")


def test_the_stream_sends_each_line_appended_to_metrics_jsonl(ui, ui_runs: Path, trained: Path):
    run = ui_runs / "streamed"
    shutil.copytree(ui_runs / "live", run)
    try:
        follow_a_growing_file(ui, run, trained)
    finally:
        shutil.rmtree(run)  # the other tests see the runs folder as conftest made it


def follow_a_growing_file(ui, run: Path, trained: Path) -> None:
    first = (run / "metrics.jsonl").read_text().splitlines()
    timeout = httpx.Timeout(5, read=20)  # a stream that never sends fails the test instead of hanging it
    with httpx.stream("GET", ui.url + "/api/stream", params={"run": "streamed"}, timeout=timeout) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        assert [read_event(lines, "the existing lines") for _ in first] == [json.loads(line) for line in first]
        third = epoch_line(trained, 3)
        with open(run / "metrics.jsonl", "a") as handle:  # as the trainer does: half a line, then the rest
            handle.write(third[:20])
            handle.flush()
            os.fsync(handle.fileno())
            handle.write(third[20:])
        assert read_event(lines, "the appended line") == json.loads(third)
        (run / "metrics.jsonl").write_text(third)  # rewritten shorter: the page must start over
        assert read_event(lines, "the reset") == {"reset": True}
        assert read_event(lines, "the line after the reset") == json.loads(third)


def test_a_stream_resumes_after_the_last_event_id(ui, ui_runs: Path):
    path = ui_runs / "live" / "metrics.jsonl"
    first_end = len(path.read_text().splitlines(keepends=True)[0].encode())
    headers = {"Last-Event-ID": str(first_end)}
    with httpx.stream("GET", ui.url + "/api/stream", params={"run": "live"}, headers=headers, timeout=20) as response:
        event = read_event(response.iter_lines(), "the second line")
    assert event == json.loads(path.read_text().splitlines()[1])


def test_a_study_lists_its_trials_and_plots(ui):
    (study,) = get(ui, "/api/studies").json()
    assert study["id"] == "study"
    assert study["files"] == ["study/study.md", "study/history.png"]
    assert [r["id"] for g in study["groups"] for r in g["runs"]] == ["study/trial-0000"]
    assert get(ui, "/files/study/history.png").status_code == 200


def test_drift_windows_of_a_prediction_log(ui):
    (folder,) = get(ui, "/api/monitors").json()
    assert folder["id"] == "shapes/monitor"
    drift = get(ui, "/api/drift", params={"path": "shapes/monitor"}).json()
    (model,) = drift["models"]
    assert model["model"] == "pets" and model["images"] == 450 and drift["window"] == 200
    assert [w["verdict"] for w in model["windows"]][0] != "drift"
    assert "brightness" in model["windows"][1]["drifted"]  # its last 150 images are shifted by 3 sigma
    assert get(ui, "/api/drift", params={"path": "shapes"}).status_code == 404


def test_with_an_api_key_every_route_but_the_page_needs_it(ui_runs: Path):
    server = UiServer(ui_runs, api_key="s3cret")
    try:
        assert get(server, "/").status_code == 200  # the page holds no data; it asks for the key
        for path in ("/api/runs", "/files/shapes/report/report.html", "/api/stream?run=live"):
            assert get(server, path).status_code == 401
            assert get(server, path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert get(server, "/api/runs", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        with httpx.Client(base_url=server.url, timeout=30) as browser:  # what the page does: key once, then a cookie
            assert browser.post("/api/session", headers={"Authorization": "Bearer wrong"}).status_code == 401
            session = browser.post("/api/session", headers={"Authorization": "Bearer s3cret"})
            assert session.status_code == 200 and "s3cret" not in session.headers["set-cookie"]
            assert "httponly" in session.headers["set-cookie"].lower()
            assert browser.get("/files/shapes/report/report.html").status_code == 200
            assert browser.get("/api/runs").status_code == 200
    finally:
        server.stop()


def test_streams_over_the_limit_are_told_to_retry(ui, monkeypatch):
    from modelcycle.ui import app

    monkeypatch.setattr(app, "MAX_STREAMS", 1)
    with httpx.stream("GET", ui.url + "/api/stream", params={"run": "live"}, timeout=20) as first:
        lines = first.iter_lines()  # kept: a dropped iterator closes the connection, and the stream with it
        assert read_event(lines, "the first line")  # the first stream is open and counted
        second = get(ui, "/api/stream", params={"run": "live"})
        assert second.status_code == 503 and second.headers["retry-after"] == "5"
    deadline = time.monotonic() + 20  # the server notices the closed stream at its next look and frees its slot
    while True:
        with httpx.stream("GET", ui.url + "/api/stream", params={"run": "live"}, timeout=20) as third:
            if third.status_code == 200:
                break
        assert time.monotonic() < deadline, "a stream whose client went away still holds its slot"
        time.sleep(0.1)
