"""Every shipped setting, set through its ``_REACTOR_*`` variable (issue 20): a valid string takes effect,
garbage is a configuration error naming the variable, and the security sections ignore the environment.

The table below is written out by hand from config.yml and the README (not from the schema under test);
a test keeps it covering every key config.yml ships. Values are read back through `pipelinejobs config
show --json`; deadlines and retention also through `watch --dry-run` and `retention --dry-run` on both
stores, and the settings that shape stored documents through the store itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from pipelinejobs import cli, service
from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.messages import CreateMessage, EventMessage
from pipelinejobs.settings import default_config, load_settings
from pipelinejobs.settings_schema import SCHEMA
from pipelinejobs.store.factory import open_job_store
from tests.conftest import EXAMPLE_PIPELINE_UUID, REACTOR, ROOT, authn_for

P = EXAMPLE_PIPELINE_UUID
HIDDEN = "*****"
SECURITY = {"admin", "legacy", "durability"}
DIGEST = "ab" * 32

#: setting -> (a valid string for its variable, the value `config show --json` then shows, garbage or None
#: when any text fits). Security settings: the value shown is the default, whatever the variable says.
CASES: dict[str, tuple[str, Any, str | None]] = {
    "mongodb.authn": (authn_for("mongodb://u:pw@db.example:27018/admin"), HIDDEN, "not base64!"),
    "mongodb.host": ("db.example", "db.example", None),
    "mongodb.port": ("27018", 27018, "twenty-seven"),
    "mongodb.username": ("reader", "reader", None),
    "mongodb.password": ("pass-word-1", HIDDEN, None),
    "mongodb.auth_source": ("admin", "admin", None),
    "mongodb.database": ("catalog_staging", "catalog_staging", None),
    "mongodb.server_selection_timeout_ms": ("2500", 2500, "2.5s"),
    "history.window": ("50", 50, "5"),  # at least 10
    "history.inline_data_bytes": ("1024", 1024, "1k"),
    "durability.write_concern": ("1", "majority", "whatever"),
    "durability.journal": ("false", True, "perhaps"),
    "store.sqlite_path": ("/tmp/elsewhere.sqlite3", "/tmp/elsewhere.sqlite3", None),
    "serve.host": ("0.0.0.0", "0.0.0.0", None),
    "serve.port": ("8080", 8080, "eighty"),
    "serve.actors": ("actor0000001, actor0000002", ["actor0000001", "actor0000002"], "actor!"),
    "serve.api_server": ("https://pj.example.org", "https://pj.example.org", "ftp://pj.example.org"),
    "serve.api_tokens": ("token-one,token-two", HIDDEN, None),
    "serve.api_token_sha256": (DIGEST, HIDDEN, "abcdef"),
    "serve.username": ("operator", "operator", None),
    "serve.tenant": ("tacc", "tacc", None),
    "serve.tls_cert": ("/etc/pj/cert.pem", "/etc/pj/cert.pem", None),
    "serve.tls_key": ("/etc/pj/key.pem", "/etc/pj/key.pem", None),
    "serve.workers": ("2", 2, "none-at-all"),
    "serve.head_timeout_seconds": ("2.5", 2.5, "0"),  # at least 0.1
    "serve.body_timeout_seconds": ("2m", 120, "slow"),
    "serve.keep_alive_seconds": ("3", 3, "-1"),
    "serve.limit_concurrency": ("50", 50, "0"),
    "serve.max_head_bytes": ("8192", 8192, "100"),  # at least 1024
    "admin.secret_sha256": (DIGEST, None, "not-a-digest"),
    "admin.token_key": ("some-key", None, None),
    "admin.token_lifetime": ("60", None, "an hour"),
    "legacy.accept_unverified_tokens": ("true", False, "sometimes"),
    "limits.max_message_bytes": ("2048", 2048, "-1"),
    "limits.max_data_bytes": ("4096", 4096, "lots"),
    "logs.level": ("debug", "DEBUG", "LOUD"),
    "deadlines.created_seconds": ("2h", 7200, "soon"),
    "deadlines.silent_seconds": ("5", 5, "5 minutes"),
    "deadlines.running_seconds": ("1d", 86400, "0"),
    "deadlines.validating_seconds": ("90m", 5400, "-5"),
    "deadlines.heartbeat_log_interval_seconds": ("60", 60, "1.5"),
    "deadlines.watch_every_seconds": ("2.5", 2.5, "often"),
    "deadlines.pipelines": (json.dumps({P: {"silent_seconds": 600}}), {P: {"silent_seconds": 600}}, '{"x": 5}'),
    "retention.days": ("30", 30, "forever"),
    "retention.states": ("retired, failed", ["RETIRED", "FAILED"], "RUNNING"),
    "retention.hidden": ("no", False, "maybe"),
    "retention.tombstone_days": ("7", 7, "0"),
    "retention.pipelines": (json.dumps({P: {"days": 365}}), {P: 365}, json.dumps({P: {"weeks": 2}})),
    "metrics.jobs_refresh_seconds": ("0.5", 0.5, "fast"),
    "metrics.recount_seconds": ("10m", 600, "never"),
    "notifications.max_attempts": ("3", 3, "three"),
    "notifications.backoff_base_seconds": ("30", 30, "-1"),
    "notifications.backoff_cap_seconds": ("1h", 3600, "long"),
    "notifications.timeout_seconds": ("5", 5, "five"),
    "notifications.lease_seconds": ("60", 60, "a minute"),
    "notifications.every_seconds": ("0", 0, "-2"),
    "notifications.refresh_seconds": ("1", 1, "soonish"),
    "notifications.batch": ("10", 10, "10.5"),
    "notifications.grace_seconds": ("15", 15, "a while"),
    "notifications.delivery_days": ("7", 7, "1w"),
    "notifications.workers": ("4", 4, "0"),
    "notifications.allowed_networks": ("127.0.0.0/8, fd00::/8", ["127.0.0.0/8", "fd00::/8"], "10.0.0.0/33"),
    "notifications.proxy": ("http://proxy.example:3128", "http://proxy.example:3128", None),
}


def variable(name: str) -> str:
    section, key = name.split(".")
    return f"_REACTOR_{section.upper()}_{key.upper()}"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No `_REACTOR_*` variable from the developer's shell; the embedded store under tmp_path."""
    for name in list(os.environ):
        if name.startswith("_REACTOR_") or name.startswith("CATALOG_ADMIN"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return monkeypatch


Run = Callable[..., tuple[int, Any, str]]


@pytest.fixture
def pj(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    """`pipelinejobs --json ARGS` in-process with ``env`` added to the environment: (exit code, JSON, stderr)."""

    def run(*argv: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            code = cli.main(["--json", *argv])
        out, err = capsys.readouterr()
        lines = [line for line in out.splitlines() if line.strip()]
        return code, json.loads(lines[-1]) if lines else None, err

    return run


# -- the table covers every shipped setting ---------------------------------------------------------
def test_the_table_covers_every_setting_config_yml_ships_and_the_schema_declares_them() -> None:
    shipped = {f"{section}.{key}" for section, keys in default_config().items() for key in keys}
    assert set(CASES) == shipped
    declared = {f"{section}.{key}" for section, keys in SCHEMA.items() for key in keys}
    assert declared == shipped, "a setting needs a line in settings_schema.SCHEMA and its key in config.yml"


def test_variable_names_are_unique() -> None:
    names = [variable(name) for name in CASES]
    assert len(set(names)) == len(names)


# -- set through the environment: shown, typed, with its origin ---------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_valid_string_in_its_variable_takes_effect(pj: Run, name: str) -> None:
    valid, expected, _ = CASES[name]
    code, shown, err = pj("config", "show", env={variable(name): valid})
    assert code == 0, err
    row = shown["settings"][name]
    if name.split(".")[0] in SECURITY:  # never from the environment: a caller under Abaco sets any variable
        default = pj("config", "show")[1]["settings"][name]
        assert row["value"] == default["value"] == expected and row["source"] == "default"
        assert row["ignored"] == variable(name) and row["variable"] is None
        return
    assert row["value"] == expected
    assert (row["source"], row["from"], row["variable"]) == ("environment", variable(name), variable(name))
    if expected == HIDDEN:
        assert valid not in json.dumps(shown) and row["secret"] is True


@pytest.mark.parametrize("name", sorted(n for n, case in CASES.items() if case[2] is not None))
def test_garbage_in_its_variable_is_a_configuration_error_naming_it(pj: Run, name: str) -> None:
    garbage = CASES[name][2]
    assert garbage is not None
    code, answer, err = pj("config", "show", env={variable(name): garbage})
    if name.split(".")[0] in SECURITY:  # ignored, so not even an error: the file alone sets these
        assert code == 0 and answer["settings"][name]["ignored"] == variable(name)
        return
    assert code == cli.EXIT_CODES[ErrorKind.CONFIGURATION], err
    assert answer["kind"] == "configuration"
    assert err.startswith(f"pipelinejobs: error (configuration): {variable(name)}: ")
    if name != "mongodb.authn":
        assert "expected " in err
    if len(garbage) > 3:
        assert garbage not in err  # never the value: it may be a secret


@pytest.mark.parametrize(
    "name", sorted(n for n, case in CASES.items() if case[2] is None and n.split(".")[0] not in SECURITY)
)
def test_text_settings_take_any_text(pj: Run, name: str) -> None:
    text = "any text: 5 minutes, [not] a list"
    code, shown, err = pj("config", "show", env={variable(name): text})
    assert code == 0, err
    assert shown["settings"][name]["value"] in (text, HIDDEN)


def test_config_show_names_the_file_and_the_default(pj: Run, tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("deadlines:\n  silent_seconds: 10m\nunrelated_tool:\n  anything: [1, 2]\n")
    code, shown, err = pj("--config", str(config), "config", "show", env={"_REACTOR_DEADLINES_CREATED_SECONDS": "60"})
    assert code == 0, err
    rows = shown["settings"]
    assert rows["deadlines.silent_seconds"] == {
        "value": 600,
        "source": "file",
        "from": str(config),
        "variable": "_REACTOR_DEADLINES_SILENT_SECONDS",
    }
    assert rows["deadlines.created_seconds"]["source"] == "environment"
    assert (
        rows["deadlines.running_seconds"]["source"] == "default"
        and rows["deadlines.running_seconds"]["value"] == 604800
    )


def test_a_file_value_of_the_wrong_type_or_a_misspelt_key_is_refused(pj: Run, tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("retention:\n  days: a month\n")
    code, _, err = pj("--config", str(config), "config", "show")
    assert code == 9 and f"{config} retention.days: expected a whole number >= 1" in err
    config.write_text("deadlines:\n  silence_seconds: 600\n")
    code, _, err = pj("--config", str(config), "config", "show")
    assert code == 9 and "unknown setting deadlines.silence_seconds" in err and "silent_seconds" in err
    config.write_text("admin:\n  secret_sha256: not-a-digest\n")  # the file is trusted, but checked too
    code, _, err = pj("--config", str(config), "config", "show")
    assert code == 9 and "admin.secret_sha256: expected a sha256 digest" in err


def test_reactor_refuses_a_message_when_a_setting_does_not_parse(tmp_path: Path) -> None:
    """The actor's whole process, as Abaco runs it: the configuration error is its JSON line, exit 1, and
    nothing is written (the store is never opened)."""
    store = tmp_path / "catalog.sqlite3"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "_REACTOR_STORE_SQLITE_PATH": str(store),
        "_REACTOR_DEADLINES_SILENT_SECONDS": "5 minutes",
        "MSG": json.dumps({"pipeline_uuid": P, "archive_path": "/p", "data": {}}),
        "_abaco_Content_Type": "application/json",
        "_abaco_execution_id": "exec000000001",
    }
    done = subprocess.run([sys.executable, str(REACTOR)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kind"] == "configuration"
    assert result["message"].startswith("_REACTOR_DEADLINES_SILENT_SECONDS: expected a whole number of seconds")
    assert not store.exists()


# -- deadlines and retention take effect, on both stores -----------------------------------------------
@pytest.fixture(params=["mongodb", "sqlite"])
def catalog(request: pytest.FixtureRequest, pj: Run, tmp_path: Path) -> dict[str, str]:
    """The variables naming a fresh catalog (a MongoDB database or a SQLite file) with the example pipeline."""
    if request.param == "mongodb":
        request.getfixturevalue("db")  # dropped afterwards
        uri, name = request.getfixturevalue("mongodb_uri"), request.getfixturevalue("database_name")
        env = {"_REACTOR_MONGODB_AUTHN": authn_for(uri), "_REACTOR_MONGODB_DATABASE": name}
    else:
        env = {"_REACTOR_STORE_SQLITE_PATH": str(tmp_path / "catalog.sqlite3")}
    assert pj("db", "init", env=env)[0] == 0
    assert pj("pipeline", "register", str(ROOT / "examples" / "pipeline.json"), env=env)[0] == 0
    return env


def walk(pj: Run, env: dict[str, str], events: list[str], *, delete: bool = False) -> str:
    """A job created, then moved through ``events`` (and hidden), all with ``env``; returns its uuid."""
    code, made, err = pj("job", "create", "--pipeline", P, "--archive-path", "/products/s", env=env)
    assert code == 0, err
    for name in events:
        code, _, err = pj("job", "event", made["uuid"], name, "--token", made["token"], env=env)
        assert code == 0, err
    if delete:
        assert pj("job", "delete", made["uuid"], "--token", made["token"], env=env)[0] == 0
    return str(made["uuid"])


def at(**delta: float) -> str:
    return (datetime.now(timezone.utc) + timedelta(**delta)).isoformat()


DEADLINES = {  # variable, value, events that bring the job to the state, deadline that runs out
    "created": ("_REACTOR_DEADLINES_CREATED_SECONDS", "2m", [], "created_seconds"),
    "silent": ("_REACTOR_DEADLINES_SILENT_SECONDS", "120", ["run"], "silent_seconds"),
    "running": ("_REACTOR_DEADLINES_RUNNING_SECONDS", "2m", ["run"], "running_seconds"),
    "validating": (
        "_REACTOR_DEADLINES_VALIDATING_SECONDS",
        "120s",
        ["run", "finish", "validate"],
        "validating_seconds",
    ),
    "per pipeline": ("_REACTOR_DEADLINES_PIPELINES", json.dumps({P: {"created_seconds": 120}}), [], "created_seconds"),
}


@pytest.mark.parametrize("case", sorted(DEADLINES))
def test_a_deadline_set_through_its_variable_is_what_watch_judges_by(
    pj: Run, catalog: dict[str, str], case: str
) -> None:
    name, value, events, deadline = DEADLINES[case]
    env = {**catalog, name: value}
    uuid = walk(pj, env, events)
    code, report, err = pj("watch", "--dry-run", "--at", at(minutes=3), env=env)
    assert code == 0, err
    assert [(f["uuid"], f["deadline"], f["seconds"]) for f in report["would_fail"]] == [(uuid, deadline, 120)]
    # the same pass under the shipped defaults (a day or more) fails nothing yet
    assert pj("watch", "--dry-run", "--at", at(minutes=3), env=catalog)[1]["would_fail"] == []


DAYS = {"_REACTOR_RETENTION_DAYS": "1"}
RETIRE, FAIL = ["run", "finish", "retire"], ["run", "fail"]
#: case -> (variables, the baseline's variables, events, hidden?, purged with the variables, with the baseline's)
RETENTION: dict[str, tuple[dict[str, str], dict[str, str], list[str], bool, bool, bool]] = {
    "days": (DAYS, {}, RETIRE, False, True, False),
    "states": ({**DAYS, "_REACTOR_RETENTION_STATES": "FAILED"}, DAYS, FAIL, False, True, False),
    "hidden": ({**DAYS, "_REACTOR_RETENTION_HIDDEN": "false"}, DAYS, [], True, False, True),
    "pipelines": ({"_REACTOR_RETENTION_PIPELINES": json.dumps({P: {"days": 1}})}, {}, RETIRE, False, True, False),
}


@pytest.mark.parametrize("case", sorted(RETENTION))
def test_retention_set_through_its_variables_is_what_retention_purges_by(
    pj: Run, catalog: dict[str, str], case: str
) -> None:
    variables, baseline, events, hidden, purged, purged_by_baseline = RETENTION[case]
    uuid = walk(pj, catalog, events, delete=hidden)
    code, report, err = pj("retention", "--dry-run", "--at", at(days=2), env={**catalog, **variables})
    assert code == 0, err
    assert report["jobs"] == ([uuid] if purged else [])
    code, report, err = pj("retention", "--dry-run", "--at", at(days=2), env={**catalog, **baseline})
    assert report["jobs"] == ([uuid] if purged_by_baseline else []), err


def test_tombstone_days_set_through_its_variable_is_when_a_purge_tombstone_expires(
    pj: Run, catalog: dict[str, str]
) -> None:
    env = {**catalog, "_REACTOR_RETENTION_DAYS": "1", "_REACTOR_RETENTION_TOMBSTONE_DAYS": "2"}
    uuid = walk(pj, env, ["run", "finish", "retire"])
    code, purged, err = pj("retention", "--at", at(days=2), env=env)
    assert code == 0 and purged["jobs"] == [uuid], err
    assert pj("retention", "--dry-run", "--at", at(days=3, hours=23), env=env)[1]["tombstones_expiring"] == 0
    assert pj("retention", "--dry-run", "--at", at(days=4, hours=1), env=env)[1]["tombstones_expiring"] == 1


# -- settings that shape what is stored, on both stores -------------------------------------------------
@pytest.fixture(params=["mongodb", "sqlite"])
def store_env(
    request: pytest.FixtureRequest, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[dict[str, str]]:
    if request.param == "mongodb":
        request.getfixturevalue("db")
        uri, name = request.getfixturevalue("mongodb_uri"), request.getfixturevalue("database_name")
        yield {"_REACTOR_MONGODB_AUTHN": authn_for(uri), "_REACTOR_MONGODB_DATABASE": name, "HOME": str(tmp_path)}
    else:
        yield {"_REACTOR_STORE_SQLITE_PATH": str(tmp_path / "catalog.sqlite3"), "HOME": str(tmp_path)}


def _job_in(env: dict[str, str], events: list[dict[str, Any]], data: dict[str, Any] | None = None) -> Any:
    """A job made and moved through the service with settings loaded from ``env``; returns its document."""
    settings = load_settings(env, ROOT / "config.yml")
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    with open_job_store(settings, env) as store:
        store.ensure_indexes()
        store.save_pipeline({"uuid": P, "id": "p", "components": []})
        made = service.handle(
            CreateMessage(pipeline_uuid=P, archive_path="/p", data=data or {}), store=store, settings=settings, now=now
        )
        for i, fields in enumerate(events):
            message = EventMessage(uuid=made["uuid"], token=made["token"], **fields)
            service.handle(message, store=store, settings=settings, now=now + timedelta(seconds=90 * (i + 1)))
        return store.find_job(made["uuid"]), [r.outcome.value for r in _history(store, made["uuid"])]


def _history(store: Any, uuid: str) -> list[Any]:
    from pipelinejobs.store.base import iter_history

    return list(iter_history(store, uuid))


def test_history_window_and_inline_bytes_from_the_environment_shape_the_document(store_env: dict[str, str]) -> None:
    env = {**store_env, "_REACTOR_HISTORY_WINDOW": "10", "_REACTOR_HISTORY_INLINE_DATA_BYTES": "64"}
    events = [{"name": "run"}] + [{"name": "update", "data": {"i": i}} for i in range(11)]
    events.append({"name": "update", "data": {"big": "x" * 100}})
    job, _ = _job_in(env, events)
    assert len(job["history"]) == 10
    assert "_in_event_log" in job["history"][-1]["data"] and job["history"][-2]["data"] == {"i": 10}


def test_heartbeat_log_interval_from_the_environment_decides_what_is_logged(store_env: dict[str, str]) -> None:
    beats = [{"name": "run"}, *({"name": "heartbeat"} for _ in range(3))]  # 90 s apart
    _, shipped = _job_in(store_env, beats)
    _, frequent = _job_in({**store_env, "_REACTOR_DEADLINES_HEARTBEAT_LOG_INTERVAL_SECONDS": "60"}, beats, {"n": 2})
    assert shipped.count("heartbeat") == 1 and frequent.count("heartbeat") == 3


def test_max_data_bytes_from_the_environment_refuses_larger_data(store_env: dict[str, str]) -> None:
    with pytest.raises(PipelineJobsError) as refused:
        from pipelinejobs.runtime import handle_body

        env = {**store_env, "_REACTOR_LIMITS_MAX_DATA_BYTES": "100"}
        settings = load_settings(env, ROOT / "config.yml")
        with open_job_store(settings, env) as store:
            body = {"pipeline_uuid": P, "archive_path": "/p", "data": {"blob": "x" * 200}}
            handle_body(body, settings=settings, store=store, now=datetime.now(timezone.utc))
    assert refused.value.kind is ErrorKind.BAD_MESSAGE


def test_the_notification_budgets_defaults_are_the_schemas_nulls() -> None:
    """Budget keeps its defaults for code that builds one; config.yml's `~` must mean the same."""
    from pipelinejobs.notify.budget import Budget

    assert Budget()._asdict() == {name: SCHEMA["notifications"][name].null for name in Budget._fields}


def test_numbers_from_the_environment_are_not_masked_in_the_logs_but_text_still_is() -> None:
    """The SDK masks every `_REACTOR_*` value; a deadline of 86400 would then hide every 86400 in the logs."""
    env = {
        "_REACTOR_DEADLINES_CREATED_SECONDS": "86400",
        "_REACTOR_RETENTION_STATES": "RETIRED,FAILED",
        "_REACTOR_MONGODB_HOST": "db.internal.example",  # text: may carry anything, stays masked
        "_REACTOR_SERVE_API_TOKEN_SHA256": DIGEST,  # a secret setting
        "_REACTOR_NOT_A_SETTING": "unknown-value",  # not ours: masked, as the SDK does
    }
    secrets = load_settings(env, ROOT / "config.yml").secrets
    assert "86400" not in secrets and "RETIRED,FAILED" not in secrets
    assert {"db.internal.example", DIGEST, "unknown-value"} <= set(secrets)


def test_a_misspelt_variable_is_named_as_ignored(pj: Run) -> None:
    """A variable of a known section that names no setting does nothing: `config show` says so (it is not an
    error: under Abaco any caller sets variables), and serve warns at start."""
    code, shown, err = pj("config", "show", env={"_REACTOR_DEADLINES_SILENCE_SECONDS": "600", "_REACTOR_OTHER": "x"})
    assert code == 0, err
    assert shown["unknown_variables"] == ["_REACTOR_DEADLINES_SILENCE_SECONDS"]
    assert shown["settings"]["deadlines.silent_seconds"]["source"] == "default"
