"""Secrets in tracking and data URIs are never printed or stored; a tracking URI that cannot work fails
in seconds with a redacted one-line message (issue #16). Loopback only, no Ray."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from dctdiff.infra.mlflow_tracking import (
    TrackingError,
    check_tracking_uri,
    redact,
    restore_secret,
    silence_run_links,
    ui_command,
)

PASSWORD = "wJalr/K7MD@EN:G%2Fb"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("postgresql://mlflow:s3cret@db:5432/mlflow", "postgresql://mlflow:***@db:5432/mlflow"),
        ("s3://AKIAXYZ:wJalrXUtnFEMI/K7MDENG/bPxRfiCY@bucket/data", "s3://AKIAXYZ:***@bucket/data"),
        ("http://alice:p@ss@127.0.0.1:5000", "http://alice:***@127.0.0.1:5000"),
        ("http://alice:a:b:c@host:5000/x", "http://alice:***@host:5000/x"),
        ("http://alice:p%2Fq%40r@host/x", "http://alice:***@host/x"),
        (f"https://alice:{PASSWORD}@mlflow.example.com:443/api", "https://alice:***@mlflow.example.com:443/api"),
        (
            "mysql+pymysql://u:pw@h/db?charset=utf8&password=p2&ssl=1",
            "mysql+pymysql://u:***@h/db?charset=utf8&password=***&ssl=1",
        ),
        (
            "https://h/f?X-Amz-Signature=abc&X-Amz-Credential=k/2025&x=1#top",
            "https://h/f?X-Amz-Signature=***&X-Amz-Credential=***&x=1#top",
        ),
        (
            "https://h/?access_token=t0k&api_key=k3y&client_secret=s",
            "https://h/?access_token=***&api_key=***&client_secret=***",
        ),
        ("http://alice:***@host:5000", "http://alice:***@host:5000"),  # already redacted: unchanged
        # no userinfo, no secret parameter: unchanged, character for character
        ("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),
        ("file:///home/me/runs@2/x", "file:///home/me/runs@2/x"),
        ("http://127.0.0.1:5000/#/experiments/1/runs/abc?x=1", "http://127.0.0.1:5000/#/experiments/1/runs/abc?x=1"),
        ("https://registry.npmjs.org/@types/node", "https://registry.npmjs.org/@types/node"),
        ("http://localhost:4873/@scope/pkg", "http://localhost:4873/@scope/pkg"),
        ("http://[::1]:5000/a@b", "http://[::1]:5000/a@b"),
        ("s3://bucket/key@v2?versionId=3", "s3://bucket/key@v2?versionId=3"),
        ("gs://b/x y:z@w", "gs://b/x y:z@w"),
        ("databricks://profile:prefix", "databricks://profile:prefix"),
        ("https://TOKEN_AS_USER@github.com/o/r", "https://TOKEN_AS_USER@github.com/o/r"),  # no password to hide
        ("plain text: no URI, user:pw@host", "plain text: no URI, user:pw@host"),
    ],
)
def test_redact_hides_passwords_and_secret_parameters_only(text, expected):
    assert redact(text) == expected


def test_redact_finds_every_uri_in_a_longer_text():
    line = (
        f"mlflow ui --backend-store-uri postgresql://u:{PASSWORD}@db/mlflow --artifacts-destination "
        f"s3://KEY:{PASSWORD}@bucket/a,http://127.0.0.1:5000 url='http://bob:hunter2@h:1/x?token=t' "
        "see file:///tmp/x"
    )
    assert redact(line) == (
        "mlflow ui --backend-store-uri postgresql://u:***@db/mlflow --artifacts-destination "
        "s3://KEY:***@bucket/a,http://127.0.0.1:5000 url='http://bob:***@h:1/x?token=***' see file:///tmp/x"
    )


def test_ui_command_is_redacted():
    command = ui_command(f"postgresql://mlflow:{PASSWORD}@db:5432/mlflow")
    assert "--backend-store-uri postgresql://mlflow:***@db:5432/mlflow" in command and "K7MD" not in command


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_server_fails_in_seconds_without_the_password():
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{_closed_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingError) as caught:
        check_tracking_uri(uri, timeout_s=2.0)
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "alice:***@127.0.0.1" in message and "did not answer within 2 s" in message and "--mlflow-uri" in message
    assert "K7MD" not in message and "\n" not in message and caught.value.__suppress_context__


def test_a_silent_server_times_out():
    with socket.socket() as sock:  # listens, never answers
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        started = time.monotonic()
        with pytest.raises(TrackingError, match="did not answer within 0.5 s"):
            check_tracking_uri(f"http://u:pw@127.0.0.1:{sock.getsockname()[1]}", timeout_s=0.5)
        assert time.monotonic() - started < 3


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_server_that_answers_passes_and_one_that_fails_is_explained(health_server, monkeypatch):
    uri = f"http://alice:{PASSWORD}@127.0.0.1:{health_server.server_address[1]}/prefix"
    check_tracking_uri(uri)
    monkeypatch.setattr(_Health, "status", 503)
    with pytest.raises(TrackingError, match=r"alice:\*\*\*@127.0.0.1:\d+/prefix answered .*/health with HTTP 503"):
        check_tracking_uri(uri)


@pytest.mark.parametrize("uri", ["htp://127.0.0.1:5000", "s3://bucket/mlflow", "postgres://u:pw@db/mlflow"])
def test_unknown_schemes_are_refused(uri):
    with pytest.raises(TrackingError, match="unknown scheme .*; use one of sqlite, postgresql, mysql") as caught:
        check_tracking_uri(uri)
    assert "pw@" not in str(caught.value)


@pytest.mark.parametrize(
    "uri", ["sqlite:///mlflow.db", "postgresql+psycopg2:///mlflow", "file:///tmp/mlruns", "databricks://p"]
)
def test_known_schemes_pass_without_a_network_check(uri):  # a host-less PostgreSQL URI: a local socket
    check_tracking_uri(uri)


def test_mlflow_prints_no_run_links_after_silence_run_links(monkeypatch, capsys):
    """MLflow's "View run ... at: URL" (TrackingServiceClient._log_url, run by set_terminated and end_run)
    printed the tracking server's password; silence_run_links turns it off."""
    from types import SimpleNamespace

    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    client = TrackingServiceClient(f"http://alice:{PASSWORD}@127.0.0.1:{_closed_port()}")
    run = SimpleNamespace(data=SimpleNamespace(tags={}), info=SimpleNamespace(experiment_id="1", run_name="r"))
    monkeypatch.setattr(type(client.store), "get_run", lambda self, run_id: run)
    client._log_url("abc")
    assert f"View run r at: http://alice:{PASSWORD}@" in capsys.readouterr().out  # set_terminated printed this
    silence_run_links()
    client._log_url("abc")
    assert capsys.readouterr().out == ""


def test_train_reports_an_unreachable_server_in_one_redacted_line(capsys, monkeypatch):
    from dctdiff.commands.train_command import main

    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)  # main sets it

    uri = f"http://alice:{PASSWORD}@127.0.0.1:{_closed_port()}"
    assert main(["--data", "unused", "--mlflow-uri", uri]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: MLflow tracking server http://alice:***@127.0.0.1") and err.count("\n") == 1
    assert "K7MD" not in err


def test_resume_takes_the_secret_again_from_the_command_line():
    saved = redact("http://alice:pw@h:5000")
    assert restore_secret(saved, "http://alice:pw@h:5000", "--mlflow-uri") == "http://alice:pw@h:5000"
    assert restore_secret("sqlite:////x.db", None, "--mlflow-uri") == "sqlite:////x.db"
    with pytest.raises(TrackingError, match=r"the saved http://alice:\*\*\*@h:5000 hides a secret: give it again"):
        restore_secret(saved, None, "--mlflow-uri")
    with pytest.raises(TrackingError, match=r"--mlflow-uri http://bob:\*\*\*@h:5000 is not the saved"):
        restore_secret(saved, "http://bob:pw@h:5000", "--mlflow-uri")
