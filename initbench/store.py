"""Opening an MLflow store safely: the URI checked, credentials kept out of it, a server probed, and a
SQLite file created by one process at a time.

    uri = clean_uri("http://user:secret@mlflow.example")   # -> http://mlflow.example, credentials to env
    client = open_client(uri)                               # TrackingUnavailable with the reason, or a client

Every error here is a TrackingUnavailable naming the store and the way out; none prints a password.
"""

import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from filelock import FileLock, Timeout
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.tracking import MlflowClient

SQLITE = "sqlite:///"
# Schemes MLflow's client can store runs in (mlflow.tracking's store registry; a bare path is a file store).
SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")
LOCK_TIMEOUT_S = 120  # another process creating the same store: wait this long for it
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


class TrackingUnavailable(ConnectionError):
    """The tracking store cannot be used: the message says which, why, and what to do."""


def resolve_uri(uri: str) -> str:
    """A relative sqlite path (sqlite:///mlflow.db) made absolute, so the printed URI works anywhere."""
    if uri.startswith(SQLITE) and not uri.startswith(SQLITE + "/"):
        return SQLITE + str(Path(uri[len(SQLITE):]).resolve())
    return uri


def sqlite_path(uri: str) -> Path | None:
    """The file of a sqlite:/// URI; None for any other store."""
    return Path(uri[len(SQLITE):]) if uri.startswith(SQLITE) else None


def redact(uri: str) -> str:
    """The URI with any password replaced by ***: safe to print, log or store."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def clean_uri(uri: str) -> str:
    """`uri` checked and without credentials: an http(s) URI's user:password move to MLflow's own
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (which the client and its subprocesses read), so
    that no password reaches a param, a tag, a config file or a message. Unknown schemes and empty
    URIs are refused with the valid schemes."""
    if not isinstance(uri, str) or not uri.strip():
        raise TrackingUnavailable(f"tracking.uri is empty; valid: sqlite:///mlflow.db, http(s)://host:port, "
                                  f"or another scheme MLflow stores runs in ({', '.join(SCHEMES)})")
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme and parts.scheme.split("+")[0] not in SCHEMES:
        raise TrackingUnavailable(f"tracking.uri={redact(uri)!r}: unknown scheme {parts.scheme!r}; valid: "
                                  f"{', '.join(SCHEMES)} (e.g. sqlite:///mlflow.db, http://127.0.0.1:5000)")
    if parts.scheme not in ("http", "https") or parts.username is None:
        return uri
    for name, value in zip(CREDENTIAL_ENV, (parts.username, parts.password or ""), strict=True):
        if os.environ.get(name, value) != value:
            raise TrackingUnavailable(f"tracking.uri={redact(uri)!r} carries credentials that differ from "
                                      f"{name}: give them once, in MLFLOW_TRACKING_USERNAME and "
                                      "MLFLOW_TRACKING_PASSWORD, and a URI without them")
        os.environ[name] = urllib.parse.unquote(value)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, naming the URI and the reason, when an http(s) URI is not an MLflow server that
    answers: nothing listening, no answer, a server error, or a web server without MLflow's /health.
    401 and 403 (an authenticating proxy in front of MLflow) count as there."""
    if not uri.startswith(("http://", "https://")):
        return
    shown = redact(uri)
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            raise TrackingUnavailable(f"{shown} answers but is not an MLflow tracking server (its /health gave "
                                      "HTTP 404); check the host and port of tracking.uri") from None
        if err.code >= 500:
            raise TrackingUnavailable(f"MLflow tracking server {shown} answered HTTP {err.code}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnavailable(f"MLflow tracking server {shown} cannot be reached: {reason}") from None


def _sqlite_problem(path: Path) -> str | None:
    """What is wrong with an existing SQLite store, read without changing it; None if it looks whole."""
    with open(path, "rb") as f:
        header = f.read(16)
    if header and header != b"SQLite format 3\x00":
        return "it is not an SQLite database"
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
            version = db.execute("select version_num from alembic_version").fetchall() \
                if "alembic_version" in tables else []
    except sqlite3.DatabaseError as err:
        return f"it is corrupt ({err})"
    if not tables:
        return None  # empty: MLflow creates its tables
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp"))
    if leftovers or not version:
        return ("it was left half-created by a creation or migration that stopped part-way "
                f"({', '.join(leftovers) or 'no schema version recorded'})")
    if version[0][0] != _get_latest_schema_revision():
        return (f"its schema is at revision {version[0][0]}, not the one this MLflow expects; if it was "
                "made by an older MLflow, back it up and run `mlflow db upgrade <tracking.uri>`")
    return None


def _open_sqlite(uri: str, path: Path) -> MlflowClient:
    """The client of a SQLite store, creating its tables under a file lock beside it, so that two
    processes never create or migrate the same store at once."""
    where = f"the MLflow store {path} (tracking.uri={uri})"
    if not path.parent.is_dir():
        raise TrackingUnavailable(f"{where}: folder {path.parent} does not exist; create it or set tracking.uri")
    if path.exists() and path.stat().st_size and _sqlite_problem(path) is None:
        return MlflowClient(uri)  # whole already: nothing to create, and no lock file (a read-only folder)
    try:
        with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S):
            if path.exists() and (problem := _sqlite_problem(path)):
                raise TrackingUnavailable(f"{where} cannot be used: {problem}. If it holds no runs you need, "
                                          f"delete {path} and run again; else set tracking.uri to a new file")
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)  # makes the store (and its tables) now, under the lock
            return client
    except TrackingUnavailable:
        raise
    except Timeout:
        raise TrackingUnavailable(f"{where}: another process has held {path}.lock for {LOCK_TIMEOUT_S} s; "
                                  "if none is running, delete the lock file") from None
    except OSError as err:
        raise TrackingUnavailable(f"{where} cannot be written: {err}. Run from a writable folder or set "
                                  "tracking.uri=sqlite:////a/writable/folder/mlflow.db") from None
    except Exception as err:  # SQLAlchemy, alembic or MLflow: say what it was in one line
        problem = _sqlite_problem(path) if path.exists() else None
        reason = problem or (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TrackingUnavailable(f"{where} cannot be opened: {reason}. If it holds no runs you need, delete "
                                  f"{path} and run again; else set tracking.uri to a new file") from None


def open_client(uri: str) -> MlflowClient:
    """An MlflowClient for a clean, resolved `uri` (see clean_uri, resolve_uri), its store ready to use."""
    path = sqlite_path(uri)
    return _open_sqlite(uri, path) if path is not None else MlflowClient(uri)
