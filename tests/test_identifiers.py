"""The compat page's vectors: UUIDs and tokens must match SD2E datacatalog byte for byte."""

from __future__ import annotations

import hashlib
import re

import pytest

from pipelinejobs import identifiers

PIPELINE = "10650844-1baa-55c5-a481-5e945b19c065"
ADMIN = {"owner": "sd2eadm", "project": "SD2E-Community", "tenant": "sd2e"}


def test_namespace_is_sd2e_org() -> None:
    assert str(identifiers.namespace()) == "54765aeb-44ca-374a-9a9f-eb4658383ee4"


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("experiment.ginkgo.10001", "experiment", "102edd93-29d6-5483-b60b-8dfd4d094b9c"),
        ("Why did it have to be snakes?", "pipelinejob", "107acb4d-1f93-553a-9e1c-b7b58125bc89"),
    ],
)
def test_catalog_uuid_vectors(text: str, kind: str, expected: str) -> None:
    assert identifiers.catalog_uuid(text, kind) == expected


def test_catalog_uuid_depends_on_domain() -> None:
    assert identifiers.catalog_uuid("x", "pipelinejob", "example.org") != identifiers.catalog_uuid("x", "pipelinejob")


@pytest.mark.parametrize(
    ("child_of", "data", "expected"),
    [
        (
            ["10483e8d-6602-532a-8941-176ce20dd05a"],
            {"param1": "value1", "param2": 1, "param3": True, "param4": [1, 2, 3], "param5": ["a", "b", "c"]},
            "107b93f3-1eae-5e79-8a18-0a480f8aa3a5",
        ),
        (
            ["10483e8d-6602-532a-8941-176ce20dd05a"],
            {"param1": "value1", "param2": 1, "param3": True, "param4": [1, 2, 3], "param5": ["a", "b", "c", "d"]},
            "107bb52d-6469-54c3-b977-0c22adcae020",
        ),
        (
            ["102edd93-29d6-5483-b60b-8dfd4d094b9c"],
            {"example_data": "datadata"},
            "107653ca-020f-5f03-9663-41cff415b087",
        ),
    ],
)
def test_job_uuid_vectors(child_of: list[str], data: dict, expected: str) -> None:
    assert identifiers.job_uuid(PIPELINE, child_of, data) == expected


def test_job_uuid_ignores_data_key_order() -> None:
    assert identifiers.job_uuid(PIPELINE, [], {"a": 1, "b": 2}) == identifiers.job_uuid(PIPELINE, [], {"b": 2, "a": 1})


def test_pipeline_uuid_vector_and_component_reduction() -> None:
    components = [
        {"id": "eqMyqq4xB1Lqa", "image": "index.docker.io/tacc/tacbobot:latest", "options": {}},
        {"id": "bbq-brisket-0.5.0", "inputs": {}, "parameters": {"smoke": True}},
    ]
    assert identifiers.pipeline_uuid("tacc/tacobot:9000", components) == PIPELINE
    # keys outside a component's class, and components of no class, do not change the uuid
    noisy = [dict(components[0], extra="x"), dict(components[1], note="y"), {"unknown": "component"}]
    assert identifiers.pipeline_uuid("tacc/tacobot:9000", noisy) == PIPELINE


def test_job_token_vector() -> None:
    token = identifiers.job_token("q2xkzq3e1x0j5e8yvq2x5w==", "107b93f3-1eae-5e79-8a18-0a480f8aa3a5", ADMIN)
    assert token == "1045671acff8be19"


def test_salt_shape() -> None:
    salts = {identifiers.new_salt() for _ in range(50)}
    assert len(salts) == 50
    assert all(len(s) == 24 and s == s.lower() for s in salts)


def test_admin_token_uses_digits_of_the_window_as_items() -> None:
    lifetime = 3600
    now = 472222 * lifetime + 5
    expected = hashlib.sha256(b"SECRET:KEY:4:7:2:2:2:2").hexdigest()[:16]
    assert identifiers.admin_token("SECRET", "KEY", lifetime, now) == expected
    assert identifiers.admin_token("SECRET", "KEY", lifetime, now + lifetime) != expected


def test_random_event_uuid_is_108_typed() -> None:
    assert identifiers.random_uuid("pipelinejob_event").startswith("108")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("{}", "PAVpwrObxp5YjYRvrJOd5yVp"), ("", "BAkwe8wKZY2NgXyBpX8K5R1D")],  # compat §7a
)
def test_archive_hashid_vectors(text: str, expected: str) -> None:
    assert identifiers.archive_hashid(text) == expected


def test_session_names_are_adjective_animal_and_seedable() -> None:
    names = {identifiers.session_name() for _ in range(20)}
    assert all(re.fullmatch(r"[a-z]{2,8}-[a-z]{2,8}", name) for name in names)
    assert len(names) > 1  # random when unseeded
    seeded = identifiers.session_name("exec0000001")
    assert re.fullmatch(r"[a-z]{2,8}-[a-z]{2,8}", seeded)
    assert identifiers.session_name("exec0000001") == seeded  # one execution, one session
