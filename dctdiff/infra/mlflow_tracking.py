"""The MLflow tracking store of every job: where it is, checking that it answers, its experiments, redacting
its URIs, source tags and the UI command. Runs themselves are opened, logged and ended in ``mlflow_runs``."""

from __future__ import annotations

import getpass
import http.client
import logging
import os
import re
import socket
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

DEFAULT_DB = "mlflow.db"
DEFAULT_EXPERIMENT = "dctdiff"
KNOWN_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "file")
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # their default ports (also with +driver)
MASK = "***"

log = logging.getLogger(__name__)

# A URI in a longer text: scheme://..., up to whitespace, a quote or the next scheme://.
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*://"
_URI = re.compile(rf"{_SCHEME}(?:(?!{_SCHEME})[^\s'\"<>`])*")
# A well-formed authority without userinfo: host (name, IPv4 or [IPv6]) and optional :port.
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]*\]|[^:@\[\]]*)(:\d*)?")
# Query parameters whose values are secrets (?password=, ?X-Amz-Signature=, ?access_token=, ?sslkey=...).
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|key|signature|credential", re.IGNORECASE)


class TrackingError(ValueError):
    """The tracking URI cannot work (unknown scheme, server not answering); the message is redacted."""


@dataclass(frozen=True)
class TrackingOptions:
    """Where a job logs: the tracking URI (None: the default store), the experiment of new runs, and
    ``run_id``, an existing run to log into instead (evaluate --run-id, the demo)."""

    uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    run_id: str | None = None


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``MLFLOW_TRACKING_URI``, else a SQLite store ``mlflow.db`` in the working directory.

    Relative SQLite paths are made absolute, so Ray workers (whose working directory differs) write
    to the same store as the driver.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    elif "://" not in uri:  # a bare path: a SQLite file
        uri = "sqlite:///" + str(Path(uri).resolve())
    return uri


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store go to an absolute ``mlartifacts/`` beside the database
    (MLflow's default is relative to each process's working directory); servers choose their own."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def get_or_create_experiment(tracking_uri: str, name: str) -> str:
    """Experiment id of ``name``, created once here in the driver (docs/ARCHITECTURE.md, "Ray, MLflow and storage facts": not in workers)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))


def ui_command(tracking_uri: str) -> str:
    """The command that opens this store in the MLflow UI, on loopback, lean (docs/ARCHITECTURE.md, "Ray, MLflow and storage facts")."""
    return redact(
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --workers 1 --host 127.0.0.1 "
        f"--backend-store-uri {tracking_uri}"
    )


UI_ADDRESS = "http://127.0.0.1:5000"  # where ``ui_command``'s server listens


def ui_link(tracking_uri: str, run_id: str) -> str:
    """The MLflow UI page of the experiment holding ``run_id``, in the runs view (MLflow 3 opens
    experiments in its GenAI view without ``workflowType=machine_learning``)."""
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    return f"{UI_ADDRESS}/#/experiments/{experiment_id}?workflowType=machine_learning"


def review_hint(tracking_uri: str, run_id: str) -> str:
    """Two lines for a person: the command that serves the store, and the link to open then."""
    return f"review it with:\n  {ui_command(tracking_uri)}\n  then open {ui_link(tracking_uri, run_id)}"


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` URI and the values of secret
    query parameters (``?password=``, ``token``, ``key``, ``secret``, ...) replaced by ``***``.

    Passwords may hold ``:``, ``@``, ``/`` and %-escapes. URIs without userinfo or secret parameters are
    returned unchanged, character for character.
    """
    return _URI.sub(lambda match: _redact_uri(match.group()), text)


def _redact_uri(uri: str) -> str:
    start = uri.index("://") + 3
    at = _userinfo_end(uri)
    if at >= 0:
        user, colon, _ = uri[start:at].partition(":")
        uri = uri[:start] + user + (colon and ":" + MASK) + uri[at:]
    head, mark, query = uri.partition("?")
    if not mark:
        return uri
    query, hash_, fragment = query.partition("#")
    return head + mark + "&".join(map(_redact_param, query.split("&"))) + hash_ + fragment


def _userinfo_end(uri: str) -> int:
    """Index of the ``@`` that ends the userinfo of ``uri``, or -1 when it has none.

    In a well-formed URI the userinfo ends at the last ``@`` before the first ``/``, ``?`` or ``#``, and a
    host[:port] follows it. A password with one of those unescaped (cloud secret keys hold ``/``) leaves
    no host[:port] there; its userinfo then ends at the URI's last ``@``.
    """
    start = uri.index("://") + 3
    authority = re.split(r"[/?#]", uri[start:], maxsplit=1)[0]
    at = authority.rfind("@")
    if _HOST_PORT.fullmatch(authority[at + 1 :]):
        return -1 if at < 0 else start + at
    return uri.rfind("@") if "@" in uri[start:] else -1


def _redact_param(param: str) -> str:
    name, equals, value = param.partition("=")
    return name + equals + MASK if equals and value and _SECRET_PARAM.search(unquote_plus(name)) else param


def restore_secret(saved: str, given: str | None, flag: str) -> str:
    """For --resume of a job that saved ``redact(uri)``: ``given`` (the URI again, with its secret) when
    passed, else ``saved``; TrackingError when ``given`` names another place or a needed secret is missing."""
    if given and redact(given) != saved:
        raise TrackingError(f"{flag} {redact(given)} is not the saved {saved}; give the job's own {flag} or drop it")
    if not given and MASK in saved:
        raise TrackingError(f"the saved {saved} hides a secret: give it again with {flag} (with its password)")
    return given or saved


def _strip_userinfo(uri: str) -> str:
    at = _userinfo_end(uri)
    return uri if at < 0 else uri[: uri.index("://") + 3] + uri[at + 1 :]


def silence_run_links() -> None:
    """Stop MLflow printing "View run ... at: URL" when a run ends (MlflowClient.set_terminated and
    mlflow.end_run write it to stdout); the URL would show the tracking server's password."""
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Raise TrackingError (message with the redacted URI and what to do) unless ``uri`` has a known
    scheme and its store can be reached within ``timeout_s``: for an http(s) server ``/health`` answers
    (one try, no MLflow retries), a database server (PostgreSQL, MySQL, SQL Server) accepts a TCP
    connection, a SQLite file's folder exists or can be created. The network checks run in a daemon
    thread waited for at most ``timeout_s`` (plus a second), so a slow name lookup cannot stretch them."""
    scheme = urlsplit(uri).scheme.partition("+")[0].lower()
    if scheme not in KNOWN_SCHEMES:
        raise TrackingError(
            f"tracking URI {redact(uri)}: unknown scheme {scheme!r}; use one of {', '.join(KNOWN_SCHEMES)} "
            "(e.g. http://HOST:5000 or sqlite:///mlflow.db) in --mlflow-uri or MLFLOW_TRACKING_URI"
        )
    if scheme in ("http", "https"):
        _within(timeout_s, uri, _check_server, uri, timeout_s)
    elif scheme in DATABASE_PORTS:
        _within(timeout_s, uri, _check_database, uri, DATABASE_PORTS[scheme], timeout_s)
    elif scheme == "sqlite":
        _check_sqlite_folder(uri)


def _unreachable(uri: str, timeout_s: float, reason: object) -> TrackingError:
    """The one line for a tracking store that did not answer: the redacted URI, why, and what to do."""
    what = "MLflow tracking server" if urlsplit(uri).scheme.lower().startswith("http") else "tracking database"
    start = "start it (mlflow server --host ... --port ...)" if what.startswith("MLflow") else "start the database"
    return TrackingError(
        f"{what} {redact(uri)} did not answer within {timeout_s:g} s ({redact(str(reason))}): "
        f"{start} or fix --mlflow-uri / MLFLOW_TRACKING_URI"
    )


def _within(timeout_s: float, uri: str, check: Callable[..., None], *args: Any) -> None:
    """Run ``check(*args)`` in a daemon thread and wait at most ``timeout_s`` + 1 s for it; its
    TrackingError is raised here, and a check still running then is reported as not answering."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            check(*args)
        except BaseException as error:  # handed to the caller's thread
            failure.append(error)

    thread = threading.Thread(target=run, name="dctdiff-tracking-check", daemon=True)
    thread.start()
    thread.join(timeout_s + 1.0)
    if thread.is_alive():
        raise _unreachable(uri, timeout_s, "no answer in time") from None
    if failure:
        raise failure[0]


def _check_database(uri: str, default_port: int, timeout_s: float) -> None:
    """A TCP connection to the database server's host:port (no credentials sent); a host-less URI (a
    local socket) is left to the database driver."""
    parts = urlsplit(_strip_userinfo(uri))
    try:
        host, port = parts.hostname, parts.port or default_port
    except ValueError as error:  # a port that is no number
        raise TrackingError(f"tracking URI {redact(uri)}: {error}; write HOST:PORT with a numeric port") from None
    if not host:
        return
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as error:
        raise _unreachable(uri, timeout_s, error.strerror or error) from None
    log.debug("tracking database %s accepts connections on %s:%s", redact(uri), host, port)


def _check_sqlite_folder(uri: str) -> None:
    """The folder of a SQLite store exists (it is created where it can be): SQLite makes the file, not its folder."""
    path = urlsplit(uri).path.removeprefix("/") if uri.startswith("sqlite:///") else ""  # sqlite:////abs, sqlite:///rel
    if not path or path == ":memory:":
        return
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrackingError(
            f"SQLite tracking store {redact(uri)}: cannot create its folder {folder} ({error.strerror or error}); "
            "choose a writable place in --mlflow-uri / MLFLOW_TRACKING_URI"
        ) from None


def _check_server(uri: str, timeout_s: float) -> None:
    parts = urlsplit(_strip_userinfo(uri))
    health = f"{parts.scheme}://{parts.netloc}/health"
    context = ssl.create_default_context()  # reachability only: no credentials are sent
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(health, timeout=timeout_s, context=context) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (OSError, http.client.HTTPException) as error:
        raise _unreachable(uri, timeout_s, getattr(error, "reason", None) or error) from None
    if status >= 500:
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} answered {health} with HTTP {status}: check the server's log"
        )
    log.debug("tracking server %s answered %s with HTTP %s", redact(uri), health, status)


def open_tracking(uri: str | None = None, timeout_s: float = 5.0) -> str:
    """What every job calls first: the resolved tracking URI, checked, with MLflow's run links silenced."""
    resolved = resolve_tracking_uri(uri)
    silence_run_links()
    check_tracking_uri(resolved, timeout_s)
    return resolved


def git_commit(folder: Path) -> str | None:
    """The commit checked out in the git work tree holding ``folder``, or None (no git, not a checkout)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def _user() -> str:
    """The login name, or "unknown" where the system has none for this process (some containers)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def source_tags(job: str) -> dict[str, str]:
    """MLflow's source tags of a run made by ``dctdiff <job>``: name, type JOB, user, and the git commit
    of the installed package when it is a git checkout."""
    tags = {"mlflow.source.name": f"dctdiff {job}", "mlflow.source.type": "JOB", "mlflow.user": _user()}
    commit = git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags
