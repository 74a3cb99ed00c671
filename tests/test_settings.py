"""config.yml + _REACTOR_* overrides, and what the environment must never change."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.settings import ROOT_CONFIG, Secret, load_settings


def _authn(uri: str) -> str:
    return base64.urlsafe_b64encode(uri.encode()).decode()


def test_shipped_config_configures_no_mongodb() -> None:
    settings = load_settings({}, ROOT_CONFIG)
    assert settings.mongodb_uri is None
    assert settings.mongodb_database == "catalog"


def test_reactor_env_selects_uri_and_database() -> None:
    env = {
        "_REACTOR_MONGODB_AUTHN": _authn("mongodb://u:p%40ss@db.example:27020/admin"),
        "_REACTOR_MONGODB_DATABASE": "catalog_staging",
    }
    settings = load_settings(env, ROOT_CONFIG)
    assert settings.mongodb_uri == Secret("mongodb://u:p%40ss@db.example:27020/admin")
    assert settings.mongodb_database == "catalog_staging"
    assert "mongodb://u:p%40ss@db.example:27020/admin" in settings.secrets


def test_authn_without_padding_is_accepted() -> None:
    authn = _authn("mongodb://h:1/x").rstrip("=")
    assert load_settings({"_REACTOR_MONGODB_AUTHN": authn}, ROOT_CONFIG).mongodb_uri == Secret("mongodb://h:1/x")


def test_host_settings_build_a_quoted_uri(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        "mongodb:\n  host: db\n  port: 27017\n  username: 'a b'\n  password: 'p@ss:w/rd'\n"
        "  auth_source: admin\n  database: catalog\n"
    )
    uri = load_settings({}, config).mongodb_uri
    assert uri is not None and uri.reveal() == "mongodb://a+b:p%40ss%3Aw%2Frd@db:27017/admin"


def test_bad_authn_is_a_configuration_error() -> None:
    with pytest.raises(PipelineJobsError) as err:
        _ = load_settings({"_REACTOR_MONGODB_AUTHN": _authn("http://not-mongo")}, ROOT_CONFIG).mongodb_uri
    assert err.value.kind is ErrorKind.CONFIGURATION


def test_the_environment_sets_any_setting_but_the_security_sections() -> None:
    env = {
        "_REACTOR_LIMITS_MAX_DATA_BYTES": "99999999",  # an int in config.yml: parsed, and it takes effect
        "_REACTOR_LEGACY_ACCEPT_UNVERIFIED_TOKENS": "true",  # security section: never from env
        "_REACTOR_ADMIN_SECRET_SHA256": "00" * 32,  # security section: never from env
        "_REACTOR_DURABILITY_JOURNAL": "nonsense",  # ignored, so not even an error (a caller can set it)
        "_REACTOR_NOT_A_KEY": "x",
    }
    settings = load_settings(env, ROOT_CONFIG)
    assert settings.limit("max_data_bytes", 1) == 99999999
    assert settings.accept_unverified_tokens is False
    assert settings.section("admin").get("secret_sha256") is None
    assert settings.write_concern == {"w": "majority", "j": True}
    assert "not_a_key" not in settings.config
    assert settings.origins["admin.secret_sha256"].ignored == "_REACTOR_ADMIN_SECRET_SHA256"


def test_admin_tokens_need_a_secret() -> None:
    assert load_settings({}, ROOT_CONFIG).admin.secret is None
    assert load_settings({"CATALOG_ADMIN_TOKEN_SECRET": "s3cret"}, ROOT_CONFIG).admin.secret == Secret("s3cret")


def test_under_abaco_admin_tokens_need_the_pin(tmp_path: Path) -> None:
    abaco = {"CATALOG_ADMIN_TOKEN_SECRET": "s3cret", "_abaco_execution_id": "e1"}
    assert load_settings(abaco, ROOT_CONFIG).admin.secret is None
    config = tmp_path / "config.yml"
    config.write_text(f"admin:\n  secret_sha256: {hashlib.sha256(b's3cret').hexdigest()}\n")
    assert load_settings(abaco, config).admin.secret == Secret("s3cret")
    wrong = dict(abaco, CATALOG_ADMIN_TOKEN_SECRET="attacker-chosen")
    assert load_settings(wrong, config).admin.secret is None


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2-value")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret) and "hunter2" not in f"{secret}"


def test_identity_from_environment() -> None:
    ident = load_settings(
        {"_abaco_username": "abaco-user", "USER": "root", "TACC_TENANT": "tacc"}, ROOT_CONFIG
    ).identity
    assert (ident.owner, ident.project, ident.tenant) == ("abaco-user", "SD2E-Community", "tacc")
    assert load_settings({"TACC_USERNAME": "tu", "_abaco_username": "x"}, ROOT_CONFIG).identity.owner == "tu"


def test_reactor_values_are_secret_except_names_and_paths() -> None:
    env = {
        "_REACTOR_MONGODB_AUTHN": _authn("mongodb://u:pw@db:27017/admin"),
        "_REACTOR_SERVE_API_TOKENS": "api-token-1,api-token-2",
        "_REACTOR_MONGODB_DATABASE": "catalog_staging",
        "_REACTOR_STORE_SQLITE_PATH": "/data/pipelinejobs.sqlite3",
    }
    secrets = load_settings(env, ROOT_CONFIG).secrets
    assert _authn("mongodb://u:pw@db:27017/admin") in secrets and "api-token-1,api-token-2" in secrets
    assert "catalog_staging" not in secrets and "/data/pipelinejobs.sqlite3" not in secrets
