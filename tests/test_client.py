"""ManagedPipelineJob: compat with datacatalog's UUIDs, documents and tokens; both transports; callbacks.

The database transport runs on the session's MongoDB-wire server; the message
transport and the callback URLs run against a live `pipelinejobs serve` on the
same database, so every test checks the stored job itself.
"""

from __future__ import annotations

import hashlib
import json
import uuid as uuidlib
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import hashids
import petname
import pytest

from pipelinejobs import identifiers
from pipelinejobs.client import ManagedPipelineJob, ManagedPipelineJobError, typed_uuids
from pipelinejobs.errors import ErrorKind
from tests import web
from tests.conftest import DATACATALOG_JOB_KEYS, EXAMPLE_PIPELINE_UUID, authn_for, prepare_database
from tests.server_fixtures import LiveServer, free_port
from tests.test_tapis import tapis_notification

ENV = {"TACC_USERNAME": "sd2eadm", "_abaco_actor_id": "G1p783PxpalBB", "_abaco_execution_id": "exec0000001"}
NONCE = "TACC_n0nce+/=&x1"
CLOCK = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
COMPAT_DATA = {"param1": "value1", "param2": 1, "param3": True, "param4": [1, 2, 3], "param5": ["a", "b", "c"]}
LIFECYCLE = [
    ("run", "RUNNING"),
    ("update", "RUNNING"),
    ("resource", "RUNNING"),
    ("finish", "FINISHED"),
    ("index", "INDEXING"),
    ("indexed", "FINISHED"),
    ("validate", "VALIDATING"),
    ("validated", "VALIDATED"),
    ("finalize", "FINALIZED"),
    ("retire", "RETIRED"),
]


# -- helpers -----------------------------------------------------------------------------------
@pytest.fixture
def mongo(mongodb_uri: str, database_name: str) -> dict[str, str]:
    """The ``mongodb`` settings dict, as actors pass it (compat §8), on a catalog prepared by `db init`."""
    prepare_database(mongodb_uri, database_name)
    return {"authn": authn_for(mongodb_uri), "database": database_name}


def pipelines(api_server: str | None = None, nonce: str | None = NONCE, **extra: str) -> dict[str, str]:
    config = {"pipeline_uuid": EXAMPLE_PIPELINE_UUID, "job_manager_id": "pjmanager0001", **extra}
    if nonce:
        config["job_manager_nonce"] = nonce
    if api_server:
        config["api_server"] = api_server
    return config


def new_job(mongo: dict[str, str] | None, config: dict[str, str], **kwargs: Any) -> ManagedPipelineJob:
    kwargs.setdefault("env", ENV)
    kwargs.setdefault("clock", lambda: CLOCK)
    return ManagedPipelineJob(mongo, config, **kwargs)


def datacatalog_job_uuid(pipeline_uuid: str, child_of: list[str], data: dict[str, Any]) -> str:
    """The library's recipe (compat §2), written out independently of pipelinejobs.identifiers."""
    namespace = uuidlib.uuid3(uuidlib.NAMESPACE_DNS, "sd2e.org")
    parts = sorted([pipeline_uuid, str(child_of), json.dumps(data, sort_keys=True, separators=(",", ":"))])
    return str(uuidlib.UUID("107" + uuidlib.uuid5(namespace, ":".join(parts)).hex[3:]))


def datacatalog_token(salt: str, uuid: str, admin: dict[str, str]) -> str:
    return hashlib.sha256((salt + ":" + repr([uuid, admin])).encode()).hexdigest()[:16]


def nonce_for(live: LiveServer) -> str:
    answer = web.post(
        f"{live.actor_url()}/nonces", headers=live.auth, json={"maxUses": -1, "level": "EXECUTE"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["result"]["id"]


def agave_job_record(status: str) -> dict[str, Any]:
    return {
        "id": "2190129393029402138-242ac11b-0001-007",
        "appId": "bbq-brisket-0.5.0",
        "executionSystem": "hpc-tacc-stampede2",
        "owner": "sd2eadm",
        "archivePath": "/products/v2/tacobot",
        "archiveSystem": "data-sd2e-community",
        "status": status,
        "inputs": {"file1": "agave://data-sd2e-community/uploads/a.fcs"},
        "parameters": {"smoke": True},
        "retries": 0,
        "localId": "8675309",
        "_links": {"self": {"href": "https://api.sd2e.org/jobs/v2/2190129393029402138-242ac11b-0001-007"}},
    }


# -- compat: UUIDs, documents, tokens ----------------------------------------------------------
COMPAT_VECTORS = [
    ({"measurement_id": "10483e8d-6602-532a-8941-176ce20dd05a"}, COMPAT_DATA, "107b93f3-1eae-5e79-8a18-0a480f8aa3a5"),
    (
        {"child_of": ["10483e8d-6602-532a-8941-176ce20dd05a"]},
        {**COMPAT_DATA, "param5": ["a", "b", "c", "d"]},
        "107bb52d-6469-54c3-b977-0c22adcae020",
    ),
    (
        {"experiment_id": "experiment.ginkgo.10001"},
        {"example_data": "datadata"},
        "107653ca-020f-5f03-9663-41cff415b087",
    ),
]


@pytest.mark.parametrize(("parents", "data", "expected"), COMPAT_VECTORS)
def test_compat_vectors_give_the_same_job_uuid(
    mongo: dict, example_pipeline: dict, db: Any, parents: dict, data: dict, expected: str
) -> None:
    with new_job(mongo, pipelines(), data=data, **parents) as job:
        job.setup()
    assert job.uuid == expected
    assert db.jobs.find_one({"uuid": expected})["child_of"] == job.child_of


def test_own_vectors_follow_the_library_recipe(mongo: dict, example_pipeline: dict) -> None:
    data = {"n": 1, "nested": {"b": 2, "a": [1, "x"]}, "flag": False}
    samples = ["sample.tacc.20001", "sample.tacc.20002"]
    with new_job(mongo, pipelines(), data={"n": 1}, sample_id=samples) as job:
        job.setup({"nested": {"b": 2, "a": [1, "x"]}, "flag": False})  # setup's data is merged in
    namespace = uuidlib.uuid3(uuidlib.NAMESPACE_DNS, "sd2e.org")
    sample_uuids = [str(uuidlib.UUID("103" + uuidlib.uuid5(namespace, s).hex[3:])) for s in samples]
    assert job.child_of == sample_uuids
    assert job.data == data
    assert job.uuid == datacatalog_job_uuid(EXAMPLE_PIPELINE_UUID, sample_uuids, data)
    assert job.uuid == "10746763-9168-5af8-a263-42f059898357"  # regression vector


def test_document_layout_and_token_match_the_library(mongo: dict, example_pipeline: dict, db: Any) -> None:
    with new_job(mongo, pipelines(), data=COMPAT_DATA, measurement_id="10483e8d-6602-532a-8941-176ce20dd05a") as job:
        job.setup()
    doc = db.jobs.find_one({"uuid": job.uuid}, {"_id": False})
    assert list(doc) == DATACATALOG_JOB_KEYS
    created = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert (doc["state"], doc["last_event"], doc["updated"]) == ("CREATED", "create", created)
    assert doc["generated_by"] == [EXAMPLE_PIPELINE_UUID] and doc["acted_on"] == doc["acted_using"] == []
    assert doc["agent"] == "https://api.sd2e.org/actors/v2/G1p783PxpalBB"
    assert doc["task"] == "https://api.sd2e.org/actors/v2/G1p783PxpalBB/executions/exec0000001"
    assert doc["archive_system"] == "data-sd2e-community" and doc["session"] == job.session
    [entry] = doc["history"]
    assert list(entry) == ["date", "data", "name", "uuid"] and entry["name"] == "create"
    assert entry["uuid"].startswith("108") and entry["date"] == created
    assert list(doc["_properties"]) == ["created_date", "modified_date", "revision", "source"]
    assert doc["_admin"] == {"owner": "sd2eadm", "project": "SD2E-Community", "tenant": "sd2e"}
    assert list(doc["_admin"]) == ["owner", "project", "tenant"]
    assert len(doc["_salt"]) == 24 and doc["_salt"] == doc["_salt"].lower()
    assert job.token == datacatalog_token(doc["_salt"], job.uuid, doc["_admin"])
    assert job.token != datacatalog_token(doc["_salt"] + "x", job.uuid, doc["_admin"])


def test_a_job_written_by_datacatalog_is_reused_with_its_history_and_token(
    mongo: dict, example_pipeline: dict, db: Any
) -> None:
    uuid = "107b93f3-1eae-5e79-8a18-0a480f8aa3a5"
    admin = {"owner": "sd2eadm", "project": "SD2E-Community", "tenant": "sd2e"}
    stamp = datetime(2019, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    history = [
        {"date": stamp, "data": None, "name": "create", "uuid": "1087dbe4-0e6b-57bc-b5e3-c4d4d1f1a7a2"},
        {"date": stamp, "data": {"n": 1}, "name": "run", "uuid": "108aaaaa-0e6b-57bc-b5e3-c4d4d1f1a7a2"},
    ]
    db.jobs.insert_one(
        {
            "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
            "data": COMPAT_DATA,
            "child_of": ["10483e8d-6602-532a-8941-176ce20dd05a"],
            "uuid": uuid,
            "state": "RUNNING",
            "last_event": "run",
            "history": history,
            "_visible": True,
            "_properties": {"created_date": stamp, "modified_date": stamp, "revision": 1, "source": "datacatalog"},
            "_admin": admin,
            "_salt": "q2xkzq3e1x0j5e8yvq2x5w==",
        }
    )
    job = new_job(mongo, pipelines(), data=COMPAT_DATA, child_of=["10483e8d-6602-532a-8941-176ce20dd05a"])
    with job:
        job.setup()
        assert (job.uuid, job.token, job.state) == (uuid, "1045671acff8be19", "RUNNING")  # the compat token vector
        assert job.finish({"done": True})["state"] == "FINISHED"
    doc = db.jobs.find_one({"uuid": uuid})
    assert [h["name"] for h in doc["history"]] == ["create", "run", "finish"]
    assert doc["_salt"] == "q2xkzq3e1x0j5e8yvq2x5w==" and doc["_properties"]["revision"] == 2


# -- the database transport -------------------------------------------------------------------
def test_database_transport_from_setup_to_retire(mongo: dict, example_pipeline: dict, db: Any) -> None:
    with new_job(mongo, pipelines(), data={"sample": "s-1"}, experiment_id="experiment.ginkgo.10001") as job:
        assert job.transport == "database"
        job.setup()
        salt = db.jobs.find_one({"uuid": job.uuid})["_salt"]
        for name, state in LIFECYCLE:
            outcome = getattr(job, name)({"step": name})
            assert (outcome["status"], outcome["event"], outcome["state"], job.state) == ("ok", name, state, state)
    doc = db.jobs.find_one({"uuid": job.uuid})
    assert doc["state"] == "RETIRED" and doc["last_event"] == "retire"
    assert [h["name"] for h in doc["history"]] == ["create"] + [name for name, _ in LIFECYCLE]
    assert [h["data"] for h in doc["history"][1:]] == [{"step": name} for name, _ in LIFECYCLE]
    assert doc["_properties"]["revision"] == len(LIFECYCLE)
    assert doc["_salt"] == salt  # never rotated: the callback's token stays valid
    assert db.updates.count_documents({"uuid": job.uuid}) == 1  # the create; events are in the event log
    log = list(db.events.find({"uuid": job.uuid}).sort("seq", 1))
    assert [(r["seq"], r["name"]) for r in log] == list(enumerate(["create"] + [name for name, _ in LIFECYCLE]))


@pytest.mark.parametrize(
    "path", [[("fail", "FAILED"), ("retire", "RETIRED")], [("run", "RUNNING"), ("finish", "FINISHED"),
             ("validate", "VALIDATING"), ("reject", "REJECTED"), ("retire", "RETIRED")]]
)  # fmt: skip
def test_database_transport_failure_and_rejection_paths(
    mongo: dict, example_pipeline: dict, db: Any, path: list[tuple[str, str]]
) -> None:
    with new_job(mongo, pipelines(), data={"path": [p[0] for p in path]}) as job:
        for name, state in path:
            assert getattr(job, name)()["state"] == state  # the first event sets the job up
    doc = db.jobs.find_one({"uuid": job.uuid})
    assert [h["name"] for h in doc["history"]] == ["create"] + [name for name, _ in path]
    assert doc["history"][1]["data"] is None


def test_invalid_transitions_are_refused_and_change_nothing(mongo: dict, example_pipeline: dict, db: Any) -> None:
    with new_job(mongo, pipelines(), data={"n": 2}) as job:
        job.setup()
        before = db.jobs.find_one({"uuid": job.uuid})
        with pytest.raises(ManagedPipelineJobError) as err:
            job.finish()
    assert err.value.kind is ErrorKind.INVALID_TRANSITION
    assert "is CREATED; 'finish' is not allowed" in err.value.message and err.value.details["allowed"]
    assert job.token not in str(err.value)
    assert db.jobs.find_one({"uuid": job.uuid}) == before


def test_setting_up_the_same_job_again_keeps_its_history(mongo: dict, example_pipeline: dict, db: Any) -> None:
    with new_job(mongo, pipelines(), data={"n": 3}, session="first") as first:
        first.setup().run()
    with new_job(mongo, pipelines(), data={"n": 3}, session="second") as again:
        again.setup()
    assert (again.uuid, again.token, again.state) == (first.uuid, first.token, "RUNNING")
    assert again.job is not None and again.job["created"] is False
    doc = db.jobs.find_one({"uuid": first.uuid})
    assert [h["name"] for h in doc["history"]] == ["create", "run"] and doc["session"] == "first"
    assert db.jobs.count_documents({}) == 1


def test_an_unregistered_pipeline_is_refused(mongo: dict, db: Any) -> None:
    with new_job(mongo, pipelines(), data={"n": 4}) as job, pytest.raises(ManagedPipelineJobError) as err:
        job.setup()
    assert err.value.kind is ErrorKind.NOT_FOUND and "register the pipeline first" in err.value.message
    assert db.jobs.count_documents({}) == 0


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(ManagedPipelineJobError) as no_manager:
        ManagedPipelineJob({}, {"pipeline_uuid": EXAMPLE_PIPELINE_UUID}, env={})
    assert no_manager.value.kind is ErrorKind.CONFIGURATION and "job_manager_id" in no_manager.value.message
    with pytest.raises(ManagedPipelineJobError) as no_db:
        ManagedPipelineJob({"database": "catalog"}, pipelines(), env={})
    assert "mongodb settings" in no_db.value.message
    with pytest.raises(ManagedPipelineJobError) as bad_transport:
        ManagedPipelineJob(None, pipelines(), transport="carrier-pigeon", env={})
    assert "transport must be" in bad_transport.value.message
    with pytest.raises(ManagedPipelineJobError) as not_set_up:
        ManagedPipelineJob(None, pipelines(), transport="message", env={}).build_webhook()
    assert "setup()" in not_set_up.value.message


# -- parents, archive paths, callback URLs ------------------------------------------------------
def test_parent_ids_become_typed_uuids() -> None:
    assert typed_uuids("experiment.ginkgo.10001", "experiment") == ["102edd93-29d6-5483-b60b-8dfd4d094b9c"]
    assert typed_uuids(["10483E8D-6602-532A-8941-176CE20DD05A"] * 2, "measurement") == [
        "10483e8d-6602-532a-8941-176ce20dd05a"
    ]
    with pytest.raises(ManagedPipelineJobError) as err:
        typed_uuids("102edd93-29d6-5483-b60b-8dfd4d094b9c", "sample")
    assert "type prefix" in err.value.message
    job = ManagedPipelineJob(None, pipelines(), transport="message", env={}, experiment_id="e1", sample_id="s1")
    assert job.child_of == [identifiers.catalog_uuid("e1", "experiment")]  # the library's order: experiment first


def test_archive_paths_are_deterministic_and_instanced_on_request() -> None:
    plain = new_job(None, pipelines(), transport="message", data={"a": 1}, sample_id="s1")
    again = new_job(None, pipelines(), transport="message", data={"a": 1}, sample_id="s1")
    other = new_job(None, pipelines(), transport="message", data={"a": 2}, sample_id="s1")
    assert plain.archive_path == again.archive_path != other.archive_path
    assert plain.archive_path.startswith("/products/v2/106508441baa55c5a4815e945b19c065/")
    assert len(plain.archive_path.split("/")) == 6 and "-" not in plain.archive_path
    instanced = ManagedPipelineJob(  # ``instanced`` is the third positional argument, as in the library
        None,
        pipelines(),
        True,
        transport="message",
        data={"a": 1},
        sample_id="s1",
        session="bunny",
        clock=lambda: CLOCK,
    )
    assert instanced.archive_path == plain.archive_path + "/bunny-20240102T030405Z"
    assert instanced.session == "bunny"
    given = new_job(None, pipelines(), transport="message", archive_path="/uploads/mine", archive_system="sys1")
    assert (given.archive_path, given.archive_system) == ("/uploads/mine", "sys1")


#: python-datacatalog's public salt for hashing typed UUIDs into path names (its settings/identifiers.py).
TYPEDUUID_HASHIDS_SALT = "xCPJ7PKTdp8BYYb4twh9xNYD"
PIPELINE_HEX = EXAMPLE_PIPELINE_UUID.replace("-", "")


def by_hand_typed_uuid(text: str, prefix: str) -> str:
    namespace = uuidlib.uuid3(uuidlib.NAMESPACE_DNS, "sd2e.org")
    return str(uuidlib.UUID(prefix + uuidlib.uuid5(namespace, text).hex[3:]))


def datacatalog_archive_path(pipeline_uuid: str, child_of: list[str], data: dict[str, Any]) -> str:
    """The library's default archive_path (compat §7a), from hashids and uuid5 directly, not pipelinejobs."""
    hasher = hashids.Hashids(salt=TYPEDUUID_HASHIDS_SALT)

    def hashed(text: str) -> str:
        return hasher.encode(uuidlib.UUID(by_hand_typed_uuid(text, "100")).int)

    parts = [pipeline_uuid, hashed(":".join(child_of)), hashed(json.dumps(data, sort_keys=True, separators=(",", ":")))]
    return ("/products/v2/" + "/".join(parts)).replace("-", "")


def test_parents_in_any_order_or_repeated_make_the_same_job(mongo: dict, example_pipeline: dict, db: Any) -> None:
    ids = ["experiment.ginkgo.10003", "experiment.ginkgo.10001", "experiment.ginkgo.10002"]
    parents = sorted(by_hand_typed_uuid(i, "102") for i in ids)
    mixed = [ids[1], by_hand_typed_uuid(ids[2], "102").upper(), ids[0], ids[1]]  # ids and typed UUIDs may mix
    orders = [ids, ids[::-1], mixed]
    uuids = set()
    for order in orders:
        with new_job(mongo, pipelines(), data={"n": 9}, experiment_id=order) as job:
            job.setup()
        assert job.child_of == parents
        uuids.add(job.uuid)
    assert uuids == {datacatalog_job_uuid(EXAMPLE_PIPELINE_UUID, parents, {"n": 9})}
    [doc] = list(db.jobs.find({}))
    assert doc["child_of"] == parents
    explicit = new_job(None, pipelines(), transport="message", child_of=[parents[1], parents[0], parents[1]])
    assert explicit.child_of == parents[:2]
    assert new_job(None, pipelines(), transport="message", child_of=parents[0]).child_of == [parents[0]]


def test_the_default_archive_path_is_the_librarys_hashids_recipe() -> None:
    data = {"b": [1, "x"], "a": {"z": None, "y": True}}
    job = new_job(None, pipelines(), transport="message", data=data, sample_id=["s2", "s1", "s2"])
    parents = sorted(by_hand_typed_uuid(s, "103") for s in ("s1", "s2"))
    assert job.archive_path == datacatalog_archive_path(EXAMPLE_PIPELINE_UUID, parents, data)
    bare = new_job(None, pipelines(), transport="message")  # H('') and H('{}'), the compat page's vectors
    assert bare.archive_path == f"/products/v2/{PIPELINE_HEX}/BAkwe8wKZY2NgXyBpX8K5R1D/PAVpwrObxp5YjYRvrJOd5yVp"


def test_a_reused_job_keeps_the_archive_path_it_was_stored_with(mongo: dict, example_pipeline: dict, db: Any) -> None:
    parents = ["10483e8d-6602-532a-8941-176ce20dd05a"]
    uuid = datacatalog_job_uuid(EXAMPLE_PIPELINE_UUID, parents, COMPAT_DATA)
    stored = datacatalog_archive_path(EXAMPLE_PIPELINE_UUID, parents, COMPAT_DATA) + "/solid-snake-20190301T120000Z"
    stamp = datetime(2019, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
    db.jobs.insert_one(
        {
            "pipeline_uuid": EXAMPLE_PIPELINE_UUID,
            "archive_path": stored,
            "data": COMPAT_DATA,
            "session": "solid-snake",
            "child_of": parents,
            "uuid": uuid,
            "state": "CREATED",
            "last_event": "create",
            "history": [
                {
                    "date": stamp,
                    "data": COMPAT_DATA,
                    "name": "create",
                    "uuid": identifiers.random_uuid("pipelinejob_event"),
                }
            ],
            "_visible": True,
            "_properties": {"created_date": stamp, "modified_date": stamp, "revision": 0, "source": "datacatalog"},
            "_admin": {"owner": "sd2eadm", "project": "SD2E-Community", "tenant": "sd2e"},
            "_salt": "q2xkzq3e1x0j5e8yvq2x5w==",
        }
    )
    with new_job(mongo, pipelines(), instanced=True, data=COMPAT_DATA, child_of=parents) as job:
        assert job.archive_path != stored  # another session and time: the products would land elsewhere
        job.setup()
    assert job.uuid == uuid and job.archive_path == stored
    assert db.jobs.find_one({"uuid": uuid})["archive_path"] == stored


def test_tacc_api_server_builds_the_callback_agent_and_task(mongo: dict, example_pipeline: dict, db: Any) -> None:
    env = {**ENV, "TACC_API_SERVER": "https://api.example.org/"}  # the library's default carries a final slash
    with new_job(mongo, pipelines(), env=env, data={"n": 7}) as job:
        job.setup()
    base = "https://api.example.org/actors/v2/"
    assert job.callback.startswith(base + "pjmanager0001/messages?x-nonce=")
    assert (job.agent, job.task) == (base + "G1p783PxpalBB", base + "G1p783PxpalBB/executions/exec0000001")
    doc = db.jobs.find_one({"uuid": job.uuid})
    assert (doc["agent"], doc["task"]) == (job.agent, job.task)
    app = new_job(None, pipelines(), transport="message", env=env, agent="bbq-brisket-0.5.0", task="1-007")
    assert (app.agent, app.task) == (
        "https://api.example.org/apps/v2/bbq-brisket-0.5.0",
        "https://api.example.org/jobs/v2/1-007",
    )
    explicit = new_job(None, pipelines("https://tacc.example.net"), transport="message", env=env)
    assert explicit.agent == "https://tacc.example.net/actors/v2/G1p783PxpalBB"  # named in pipelines: it wins


def test_the_default_session_is_an_adjective_animal_name(mongo: dict, example_pipeline: dict, db: Any) -> None:
    with new_job(mongo, pipelines(), data={"n": 8}) as job:
        job.setup()
    adjective, _, animal = job.session.partition("-")
    assert adjective in petname.adjectives and animal in petname.names  # the library's words (petname)
    assert len(adjective) <= 8 and len(animal) <= 8  # and its length limit
    assert db.jobs.find_one({"uuid": job.uuid})["session"] == job.session
    assert dict(parse_qsl(urlsplit(job.callback).query))["session"] == job.session


def test_callback_urls_are_url_encoded_without_double_slashes(mongo: dict, example_pipeline: dict) -> None:
    session = "fluffy bunny&x=1/é"
    with new_job(mongo, pipelines("https://api.example.org/"), data={"n": 5}, session=session) as job:
        job.setup()
    assert job.callback == job.build_webhook()
    parts = urlsplit(job.callback)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "api.example.org", "/actors/v2/pjmanager0001/messages")
    assert "//" not in job.callback.split("://", 1)[1]
    assert parse_qsl(parts.query) == [
        ("x-nonce", NONCE),
        ("token", job.token),
        ("uuid", job.uuid),
        ("session", session),
    ]
    notifications = job.agave_notifications()
    assert [(n["event"], n["persistent"]) for n in notifications] == [
        ("RUNNING", True),
        ("FINISHED", False),  # compat §7: Agave sends FINISHED after archiving, and for jobs that don't archive
        ("FAILED", False),
    ]
    assert [n["url"] for n in notifications] == [
        job.callback + "&status=${JOB_STATUS}",  # Agave expands the macro itself: it must stay unencoded
        job.callback + "&status=FINISHED",
        job.callback + "&status=${JOB_STATUS}",
    ]
    assert job.tapis_subscriptions() == [
        {
            "description": f"PipelineJob {job.uuid} status callbacks",
            "enabled": True,
            "eventCategoryFilter": "JOB_NEW_STATUS",
            "ttlMinutes": 10080,
            "deliveryTargets": [{"deliveryMethod": "WEBHOOK", "deliveryAddress": job.callback}],
        }
    ]
    assert job.token not in repr(job)


def test_v3_managers_get_v3_callback_urls(mongo: dict, example_pipeline: dict) -> None:
    with new_job(mongo, pipelines("https://tacc.tapis.io", api_version="v3"), data={"n": 6}) as job:
        job.setup()
    assert job.callback.startswith("https://tacc.tapis.io/v3/actors/pjmanager0001/messages?x-nonce=")


# -- callbacks used verbatim, as Agave and Tapis do ----------------------------------------------
def test_agave_posts_its_job_record_to_the_callback(
    live_server: LiveServer, mongo: dict, example_pipeline: dict, db: Any
) -> None:
    config = pipelines(live_server.url + "/", nonce_for(live_server))
    with new_job(mongo, config, data={"agave": 1}) as job:
        job.setup()
    running = web.post(job.callback + "&status=RUNNING", json=agave_job_record("RUNNING"), timeout=30)
    assert running.status_code == 200, running.text
    assert db.jobs.find_one({"uuid": job.uuid})["state"] == "RUNNING"
    [finished] = [n for n in job.agave_notifications() if n["event"] == "FINISHED"]
    assert web.post(finished["url"], json=agave_job_record("FINISHED"), timeout=30).status_code == 200
    doc = db.jobs.find_one({"uuid": job.uuid})
    assert doc["state"] == "FINISHED" and [h["name"] for h in doc["history"]] == ["create", "run", "finish"]
    assert doc["history"][1]["data"]["status"] == "RUNNING" and "_links" not in doc["history"][1]["data"]


def test_a_tapis_notification_to_the_callback_moves_the_job(
    live_server: LiveServer, mongo: dict, example_pipeline: dict, db: Any
) -> None:
    nonce = nonce_for(live_server)
    with new_job(mongo, pipelines(live_server.url, nonce), data={"tapis": 1}) as job:
        job.setup()
    [subscription] = job.tapis_subscriptions()
    address = subscription["deliveryTargets"][0]["deliveryAddress"]
    for status, state in (("STAGING_INPUTS", "CREATED"), ("RUNNING", "RUNNING"), ("FINISHED", "FINISHED")):
        answer = web.post(address, json=tapis_notification(status, callback=address), timeout=30)
        assert answer.status_code == 200, answer.text
        assert db.jobs.find_one({"uuid": job.uuid})["state"] == state
    doc = db.jobs.find_one({"uuid": job.uuid})
    assert [h["name"] for h in doc["history"]] == ["create", "resource", "run", "finish"]
    assert doc["history"][-1]["data"]["event"]["data"]["newJobStatus"] == "FINISHED"
    assert nonce not in json.dumps(doc["history"], default=str)


# -- the message transport ----------------------------------------------------------------------
def test_message_transport_from_setup_to_retire(live_server: LiveServer, example_pipeline: dict, db: Any) -> None:
    config = pipelines(live_server.url, nonce_for(live_server))
    job = new_job(None, config, transport="message", data={"sample": "s-2"}, sample_id="sample.tacc.1")
    assert job.transport == "message"
    job.setup()
    assert job.uuid == datacatalog_job_uuid(EXAMPLE_PIPELINE_UUID, job.child_of, {"sample": "s-2"})
    doc = db.jobs.find_one({"uuid": job.uuid})
    assert doc["state"] == "CREATED" and job.token == datacatalog_token(doc["_salt"], job.uuid, doc["_admin"])
    assert doc["child_of"] == job.child_of and doc["session"] == job.session
    for name, state in LIFECYCLE:
        outcome = getattr(job, name)({"step": name})
        assert (outcome["status"], outcome["state"], job.state) == ("ok", state, state)
    doc = db.jobs.find_one({"uuid": job.uuid})
    assert doc["state"] == "RETIRED"
    assert [h["name"] for h in doc["history"]] == ["create"] + [name for name, _ in LIFECYCLE]
    assert [h["data"] for h in doc["history"][1:]] == [{"step": name} for name, _ in LIFECYCLE]


def test_message_transport_refusals_and_bearer_auth(live_server: LiveServer, example_pipeline: dict, db: Any) -> None:
    job = new_job(None, pipelines(live_server.url, None), transport="message", bearer=live_server.api_token)
    job.setup()
    assert "x-nonce" not in job.callback
    with pytest.raises(ManagedPipelineJobError) as err:
        job.validate()
    assert err.value.kind is ErrorKind.INVALID_TRANSITION and "is CREATED" in err.value.message
    assert db.jobs.find_one({"uuid": job.uuid})["state"] == "CREATED"
    with pytest.raises(ManagedPipelineJobError) as forged:
        job.run(token="ffffffffffffffff")
    assert forged.value.kind is ErrorKind.UNAUTHORIZED
    unauthenticated = new_job(None, pipelines(live_server.url, None), transport="message")
    with pytest.raises(ManagedPipelineJobError) as no_auth:
        unauthenticated.setup()
    assert no_auth.value.kind is ErrorKind.UNAUTHORIZED and "No JWT or nonce provided." in no_auth.value.message


def test_message_transport_without_waiting(live_server: LiveServer, example_pipeline: dict, db: Any) -> None:
    job = new_job(None, pipelines(live_server.url, nonce_for(live_server)), transport="message", synchronous=False)
    job.setup()  # set-up always waits: the token exists only in the manager's answer
    queued = job.run({"async": True})
    assert queued["status"] == "success" and queued["result"]["executionId"]
    assert db.jobs.find_one({"uuid": job.uuid})["state"] == "RUNNING"


def test_message_transport_to_an_unreachable_manager() -> None:
    config = pipelines(f"http://127.0.0.1:{free_port()}", NONCE)
    job = new_job(None, config, transport="message", retries=1, timeout=2.0)
    with pytest.raises(ManagedPipelineJobError) as err:
        job.setup()
    assert err.value.kind is ErrorKind.REMOTE_UNAVAILABLE and "after 2 attempt(s)" in err.value.message
    assert NONCE not in f"{err.value} {err.value.to_dict()}"
