"""Classification: each message is exactly one kind, or a clear error naming every candidate."""

from __future__ import annotations

import pytest

from pipelinejobs.errors import ErrorKind, PipelineJobsError
from pipelinejobs.intake import Intake, parse_message
from pipelinejobs.messages import CreateMessage, DeleteMessage, EventMessage, classify, validator

UUID = "1073f4ff-c2b9-5190-bd9a-e6a406d9796a"
TOKEN = "0dc73dc3ff39b49a"


def _classify(body, **params):
    return classify(Intake(body=body, content_type="application/json", params=params))


def test_each_schema_loads_and_is_valid_draft7() -> None:
    for kind in ("event", "delete", "create", "agavejobs"):
        assert validator(kind).schema["$schema"].startswith("http://json-schema.org/draft-07")


def test_seed_examples_classify() -> None:
    event = _classify({"uuid": UUID, "data": {"arbitrary": "key value data"}, "name": "finish", "token": TOKEN})
    assert event == EventMessage(UUID, "finish", TOKEN, {"arbitrary": "key value data"}, "message")
    by_url = _classify({"arbitrary": "key value data"}, uuid=UUID, name="finish", token=TOKEN)
    assert by_url == EventMessage(UUID, "finish", TOKEN, {"arbitrary": "key value data"}, "url")
    delete = _classify(
        {"uuid": "10715620-ae90-5b92-bf4e-fbd491c21e03", "action": "delete", "force": True, "token": TOKEN}
    )
    assert delete == DeleteMessage("10715620-ae90-5b92-bf4e-fbd491c21e03", True, TOKEN)
    create = _classify({"pipeline_uuid": "10650844-1baa-55c5-a481-5e945b19c065", "archive_path": "/a", "data": {}})
    assert isinstance(create, CreateMessage) and create.child_of == ()


def test_a_message_fitting_nothing_names_every_candidate_without_values() -> None:
    with pytest.raises(PipelineJobsError) as err:
        _classify({"uuid": UUID, "name": "finish", "token": "SECRETSECRET1234", "colour": "blue-secret-value"})
    error = err.value
    assert error.kind is ErrorKind.BAD_MESSAGE
    assert set(error.details["candidates"]) == {
        "PipelineJobEvent",
        "PipelineJobDeleteAction",
        "PipelineJobAction",
        "event by URL parameters",
    }
    assert "unexpected field 'colour'" in error.message
    assert "missing required field 'action'" in error.message
    assert "SECRETSECRET1234" not in error.message and "blue-secret-value" not in error.message


def test_enum_and_pattern_errors_do_not_echo_the_value() -> None:
    with pytest.raises(PipelineJobsError) as err:
        _classify({"uuid": "not-a-uuid-but-a-secret", "name": "finish"})
    assert "uuid: is not in the expected format" in err.value.message
    assert "not-a-uuid-but-a-secret" not in err.value.message


def test_url_token_joins_a_body_without_one_and_is_validated() -> None:
    assert _classify({"uuid": UUID, "name": "run"}, token=TOKEN).token == TOKEN
    with pytest.raises(PipelineJobsError) as err:
        _classify({"uuid": UUID, "name": "run"}, token="bad token!")
    assert "token URL parameter" in err.value.message


def test_repr_and_json_parse_to_the_same_message() -> None:
    msg = {"uuid": UUID, "name": "finish", "token": TOKEN, "data": {"ok": True, "none": None, "t": (1, 2)}}
    as_repr = parse_message(repr(msg), "str", 10_000)
    assert as_repr["data"] == {"ok": True, "none": None, "t": [1, 2]}
    assert parse_message('{"a": true, "b": null}', "application/json", 100) == {"a": True, "b": None}
    assert parse_message("plain words", "str", 100) == "plain words"
    with pytest.raises(PipelineJobsError):
        parse_message(repr({"s": {1, 2}}), "str", 100)
    # NaN is not JSON: the text is kept as text, and text fits no message type
    assert parse_message('{"n": NaN}', "str", 100) == '{"n": NaN}'
    with pytest.raises(PipelineJobsError) as err:
        _classify('{"n": NaN}')
    assert "not JSON" in err.value.message


def test_each_reason_is_given_once() -> None:
    with pytest.raises(PipelineJobsError) as err:
        _classify({"a": 1})
    reasons = err.value.details["candidates"]["PipelineJobEvent"]
    assert len(reasons) == len(set(reasons)) and "missing required field 'uuid', 'name'" in reasons
