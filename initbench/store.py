"""Opening an MLflow store safely: the URI checked, credentials kept out of it, a server probed, and a
store's schema created by one process at a time (a file lock for SQLite, an advisory lock for PostgreSQL).

    uri = clean_uri("http://user:secret@mlflow.example")   # -> http://mlflow.example, credentials to env
    client = open_client(uri)                               # TrackingUnavailable with the reason, or a client

Every error here is a TrackingUnavailable naming the store and the way out; none prints a password.
"""

import os
import shutil
import sqlite3
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import sqlalchemy
from filelock import FileLock, Timeout
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.tracking import MlflowClient

SQLITE = "sqlite:///"
# Schemes MLflow's client can store runs in (mlflow.tracking's store registry; a bare path is a file store).
SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")
LOCK_TIMEOUT_S = 120  # another process creating the same store: wait this long for it
DRIVERS = {"psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient"}  # SQLAlchemy's default drivers: their packages
BUSY_WAIT_S, BUSY_POLL_S = 60, 5  # a store another process holds locked: wait this long, saying so at each poll
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")  # a server's, read by MLflow
# A database URI's password (postgresql://user:password@host/db), moved here by clean_uri: MLflow has no
# variable of its own for it, and the URI is written to configs, params and messages.
DB_PASSWORD_ENV = "INITBENCH_TRACKING_DB_PASSWORD"
# PostgreSQL advisory lock key ('init' in ASCII) under which a job opens a store: one creates the schema.
SCHEMA_LOCK_KEY = 0x696E6974


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
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (which the client and its subprocesses read), a
    database URI's password (any other scheme) to DB_PASSWORD_ENV (see with_password), so that no
    password reaches a param, a tag, a config file or a message. Unknown schemes and empty URIs are
    refused with the valid schemes."""
    if not isinstance(uri, str) or not uri.strip():
        raise TrackingUnavailable(f"tracking.uri is empty; valid: sqlite:///mlflow.db, http(s)://host:port, "
                                  f"or another scheme MLflow stores runs in ({', '.join(SCHEMES)})")
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme and parts.scheme.split("+")[0] not in SCHEMES:
        raise TrackingUnavailable(f"tracking.uri={redact(uri)!r}: unknown scheme {parts.scheme!r}; valid: "
                                  f"{', '.join(SCHEMES)} (e.g. sqlite:///mlflow.db, http://127.0.0.1:5000)")
    if parts.scheme in ("file", "") and not _env_true("MLFLOW_ALLOW_FILE_STORE"):
        raise TrackingUnavailable(f"tracking.uri={uri!r} is a file store (./mlruns), which MLflow 3 keeps in "
                                  "maintenance mode and refuses unless MLFLOW_ALLOW_FILE_STORE=true is set; use "
                                  "sqlite:///mlflow.db (the default), or set that variable to use it anyway")
    if parts.scheme in ("http", "https") and parts.username is not None:
        moved, netloc = zip(CREDENTIAL_ENV, (parts.username, parts.password or ""), strict=True), ""
    elif parts.password is not None:  # a database's driver needs the password: it waits in DB_PASSWORD_ENV
        moved, netloc = [(DB_PASSWORD_ENV, parts.password)], f"{parts.username}@" if parts.username else ""
    else:
        return uri
    for name, value in moved:
        if os.environ.get(name, urllib.parse.unquote(value)) != urllib.parse.unquote(value):
            raise TrackingUnavailable(f"tracking.uri={redact(uri)!r} carries credentials that differ from "
                                      f"{name}: give them once, in {name}, and a URI without them")
        os.environ[name] = urllib.parse.unquote(value)
    netloc += parts.hostname + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def with_password(uri: str) -> str:
    """A clean database URI with the password that clean_uri moved to DB_PASSWORD_ENV put back, for the
    driver alone (MlflowClient); never print or store the result."""
    parts = urllib.parse.urlsplit(uri)
    secret = os.environ.get(DB_PASSWORD_ENV)
    if parts.scheme in ("http", "https", "sqlite", "file", "") or parts.password is not None or not secret:
        return uri
    netloc = f"{parts.username or ''}:{urllib.parse.quote(secret, safe='')}@{parts.hostname or ''}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))


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


def is_busy(err: BaseException) -> bool:
    """SQLite's (or SQLAlchemy's wrapping of it) 'database is locked' / 'busy': another process holds a lock."""
    text = str(err).lower()
    return "database is locked" in text or "database is busy" in text


def _holders(path: Path) -> str:
    """The processes that have `path` open, as 'name (PID n)', or a phrase saying none was found."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.pid != os.getpid() and any(f.path == str(path) for f in proc.open_files()):
                found.append(f"{proc.info['name']} (PID {proc.pid})")
        except (psutil.Error, OSError):
            continue
    return ", ".join(found) or "a process this user cannot see, or on another host"


def _busy(path: Path, waited: float) -> TrackingUnavailable:
    return TrackingUnavailable(f"the MLflow store {path} is busy: another process has held it locked for "
                               f"{waited:.0f} s ({_holders(path)}). The store itself is fine and nothing was "
                               "written; run again once that process is done, or set tracking.uri to another file")


def _read_schema(path: Path) -> tuple[set[str], list]:
    """(tables, alembic version rows) of the SQLite file, read-only. A file another process holds locked
    is waited for, up to BUSY_WAIT_S, with a line on stderr every BUSY_POLL_S; then TrackingUnavailable."""
    start = time.monotonic()
    while True:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_POLL_S) as db:
                tables = {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
                version = db.execute("select version_num from alembic_version").fetchall() \
                    if "alembic_version" in tables else []
            return tables, version
        except sqlite3.OperationalError as err:
            waited = time.monotonic() - start
            if not is_busy(err):
                raise
            if waited >= BUSY_WAIT_S:
                raise _busy(path, waited) from None
            print(f"the MLflow store {path} is locked by another process ({_holders(path)}); waited "
                  f"{waited:.0f} s of {BUSY_WAIT_S} s", file=sys.stderr, flush=True)


def _sqlite_problem(path: Path) -> str | None:
    """What is wrong with an existing SQLite store, read without changing it; None if it looks whole.
    A store that another process holds locked is not corrupt: see _read_schema."""
    with open(path, "rb") as f:
        header = f.read(16)
    if header and header != b"SQLite format 3\x00":
        return "it is not an SQLite database"
    try:
        tables, version = _read_schema(path)
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
    start, created = time.monotonic(), False
    try:
        with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S):
            if path.exists() and (problem := _sqlite_problem(path)):
                raise TrackingUnavailable(f"{where} cannot be used: {problem}. If it holds no runs you need, "
                                          f"delete {path} and run again; else set tracking.uri to a new file")
            created = not path.exists() or not path.stat().st_size
            try:
                client = MlflowClient(uri)
                client.search_experiments(max_results=1)  # makes the store (and its tables) now, under the lock
                return client
            except Exception as err:
                if created and _disk_full(path, err):  # the half-made file is ours and holds nothing
                    path.unlink(missing_ok=True)
                raise
    except TrackingUnavailable:
        raise
    except Timeout:
        raise TrackingUnavailable(f"{where}: another process has held {path}.lock for {LOCK_TIMEOUT_S} s; "
                                  "if none is running, delete the lock file") from None
    except Exception as err:  # OSError, SQLAlchemy, alembic or MLflow: say what it was in one line
        raise _open_error(where, path, err, time.monotonic() - start, created) from None


def _disk_full(path: Path, err: BaseException) -> bool:
    text = str(err).lower()
    return "disk is full" in text or "no space left" in text or shutil.disk_usage(path.parent).free < 1 << 20


def _open_error(where: str, path: Path, err: BaseException, waited: float, created: bool) -> TrackingUnavailable:
    """The one-line reason a SQLite store could not be opened or created, with the way out: a full disk is
    named, a busy store is waited for and called busy, and deleting the file is suggested only for one that
    is damaged (never for a whole store another process uses)."""
    if is_busy(err):
        return _busy(path, waited)
    if _disk_full(path, err):
        free = shutil.disk_usage(path.parent).free
        made = f"; the half-made {path.name} was removed" if created else ""
        return TrackingUnavailable(f"{where} cannot be {'created' if created else 'written'}: the disk that "
                                   f"holds {path.parent} is full ({free // 1024} KiB free){made}. Free space "
                                   "there or set tracking.uri to a file on another disk")
    if isinstance(err, OSError):
        return TrackingUnavailable(f"{where} cannot be written: {err}. Run from a writable folder or set "
                                   "tracking.uri=sqlite:////a/writable/folder/mlflow.db")
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    problem = _sqlite_problem(path) if path.exists() and path.stat().st_size else None
    if problem:
        return TrackingUnavailable(f"{where} cannot be opened: {problem}. If it holds no runs you need, delete "
                                   f"{path} and run again; else set tracking.uri to a new file")
    return TrackingUnavailable(f"{where} cannot be opened: {reason}")


@contextmanager
def _postgres_schema_lock(uri: str) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock SCHEMA_LOCK_KEY: the parallel jobs of a sweep on a new
    database would otherwise all create MLflow's tables at once (`relation "experiments" already exists`)."""
    engine = sqlalchemy.create_engine(with_password(uri), poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("select pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("select pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def open_client(uri: str) -> MlflowClient:
    """An MlflowClient for a clean, resolved `uri` (see clean_uri, resolve_uri), its store ready to use."""
    path = sqlite_path(uri)
    if path is not None:
        return _open_sqlite(uri, path)
    lock = _postgres_schema_lock(uri) if uri.startswith("postgresql") else nullcontext()
    try:
        with lock:
            return MlflowClient(with_password(uri))  # a database store connects (and migrates) here
    except ModuleNotFoundError as err:
        package = DRIVERS.get(err.name, err.name)
        raise TrackingUnavailable(f"tracking.uri={redact(uri)!r} needs the Python module {err.name!r}, the "
                                  f"database driver MLflow uses for it: pip install {package}") from None
    except Exception as err:  # a database that refuses the connection, or a URI MLflow cannot use
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        secret = os.environ.get(DB_PASSWORD_ENV)
        reason = reason.replace(secret, "***") if secret else reason
        raise TrackingUnavailable(f"the MLflow store tracking.uri={redact(uri)!r} cannot be opened: {reason}") from None
