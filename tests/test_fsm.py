"""Every (state, event) cell of the transition table of compat §5."""

from __future__ import annotations

import itertools

import pytest

from pipelinejobs import fsm

EXPECTED = {
    # event: ({from states}, to state or "=")
    "run": ({"CREATED", "RUNNING"}, "RUNNING"),
    "update": ({"CREATED", "RUNNING", "VALIDATING", "INDEXING"}, "="),
    "resource": ({"CREATED", "RUNNING"}, "="),
    "fail": ({"CREATED", "RUNNING", "VALIDATING", "INDEXING"}, "FAILED"),
    "finish": ({"RUNNING", "FINISHED"}, "FINISHED"),
    "index": ({"FINISHED", "INDEXING"}, "INDEXING"),
    "indexed": ({"FINISHED", "INDEXING"}, "FINISHED"),
    "validate": ({"FINISHED", "VALIDATED"}, "VALIDATING"),
    "validated": ({"VALIDATING", "VALIDATED"}, "VALIDATED"),
    "reject": ({"VALIDATING"}, "REJECTED"),
    "finalize": ({"VALIDATED"}, "FINALIZED"),
    "retire": ({"FAILED", "FINALIZED", "FINISHED", "REJECTED", "VALIDATING", "VALIDATED"}, "RETIRED"),
    "reset": ({s.value for s in fsm.State}, "RESET"),
    "ready": ({"RESET"}, "CREATED"),
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product([s.value for s in fsm.State], EXPECTED)))
def test_every_cell(state: str, event: str) -> None:
    sources, target = EXPECTED[event]
    assert fsm.allows(state, event) is (state in sources)
    if state in sources:
        expected = state if target == "=" else target
        assert fsm.target_state(event, fsm.State(state)).value == expected


def test_create_is_not_a_message_event() -> None:
    assert "create" not in fsm.MESSAGE_EVENTS
    assert all(e in fsm.MESSAGE_EVENTS for e in EXPECTED)


def test_allowed_events_lists_exactly_the_accepted_ones() -> None:
    assert fsm.allowed_events("FINALIZED") == ["retire", "reset"]
    assert fsm.allowed_events("RESET") == ["reset", "ready"]
    assert fsm.allowed_events("NOT_A_STATE") == []


def test_admin_events() -> None:
    assert {"reset", "ready"} == fsm.ADMIN_EVENTS


# -- late scheduler callbacks ----------------------------------------------------------------------
PAST_RUNNING = ("FINISHED", "FAILED", "INDEXING", "VALIDATING", "VALIDATED", "REJECTED", "FINALIZED", "RETIRED")


@pytest.mark.parametrize("state", [s.value for s in fsm.State])
@pytest.mark.parametrize("event", fsm.MESSAGE_EVENTS)
def test_people_and_actors_are_never_stale(state: str, event: str) -> None:
    assert fsm.is_stale(state, event, scheduler=False, status="QUEUED") is False


@pytest.mark.parametrize("state", [s.value for s in fsm.State])
@pytest.mark.parametrize("event", ["run", "resource", "update", "fail", "finish"])
def test_a_scheduler_callback_is_stale_only_when_the_job_is_past_it(state: str, event: str) -> None:
    refused_late = state in PAST_RUNNING and not fsm.allows(state, event)
    assert fsm.is_stale(state, event, scheduler=True) is refused_late
    # a status from before running (QUEUED, STAGING_INPUTS...) is late once the job runs or has run
    late = refused_late or state in ("RUNNING", *PAST_RUNNING)
    assert fsm.is_stale(state, event, scheduler=True, status="QUEUED") is late
    assert fsm.is_stale(state, event, scheduler=True, status="staging_inputs") is late


def test_the_examples_of_issue_8() -> None:
    assert fsm.is_stale("FINISHED", "run", scheduler=True, status="RUNNING")  # RUNNING after FINISHED
    assert fsm.is_stale("RUNNING", "resource", scheduler=True, status="QUEUED")  # QUEUED after RUNNING
    assert all(fsm.is_stale("RETIRED", e, scheduler=True, status="FAILED") for e in ("run", "fail", "finish", "update"))
    assert not fsm.is_stale("CREATED", "finish", scheduler=True, status="FINISHED")  # behind, not past: an error
    assert not fsm.is_stale("RUNNING", "resource", scheduler=True, status="ARCHIVING")  # after running: applied
