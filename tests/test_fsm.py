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
