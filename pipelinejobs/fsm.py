"""The PipelineJob state machine as plain data (datacatalog-compat.md §5).

No I/O and no clock here: the table is walked cell by cell in tests/test_fsm.py.
"""

from __future__ import annotations

import enum


class State(str, enum.Enum):
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    FINISHED = "FINISHED"
    INDEXING = "INDEXING"
    VALIDATING = "VALIDATING"
    VALIDATED = "VALIDATED"
    REJECTED = "REJECTED"
    FINALIZED = "FINALIZED"
    RETIRED = "RETIRED"
    RESET = "RESET"


S = State
ALL_STATES: frozenset[State] = frozenset(State)

# event -> (states it may be sent in, state it leads to; None means "stays")
TRANSITIONS: dict[str, tuple[frozenset[State], State | None]] = {
    "create": (frozenset({S.CREATED}), S.CREATED),
    "run": (frozenset({S.CREATED, S.RUNNING}), S.RUNNING),
    "update": (frozenset({S.CREATED, S.RUNNING, S.VALIDATING, S.INDEXING}), None),
    "resource": (frozenset({S.CREATED, S.RUNNING}), None),
    "fail": (frozenset({S.CREATED, S.RUNNING, S.VALIDATING, S.INDEXING}), S.FAILED),
    "finish": (frozenset({S.RUNNING, S.FINISHED}), S.FINISHED),
    "index": (frozenset({S.FINISHED, S.INDEXING}), S.INDEXING),
    "indexed": (frozenset({S.FINISHED, S.INDEXING}), S.FINISHED),
    "validate": (frozenset({S.FINISHED, S.VALIDATED}), S.VALIDATING),
    "validated": (frozenset({S.VALIDATING, S.VALIDATED}), S.VALIDATED),
    "reject": (frozenset({S.VALIDATING}), S.REJECTED),
    "finalize": (frozenset({S.VALIDATED}), S.FINALIZED),
    "retire": (
        frozenset({S.FAILED, S.FINALIZED, S.FINISHED, S.REJECTED, S.VALIDATING, S.VALIDATED}),
        S.RETIRED,
    ),
    "reset": (ALL_STATES, S.RESET),
    "ready": (frozenset({S.RESET}), S.CREATED),
}

#: Events only a holder of an admin token may send.
ADMIN_EVENTS: frozenset[str] = frozenset({"reset", "ready"})
#: Events a message may carry (``create`` is reserved for job creation).
MESSAGE_EVENTS: tuple[str, ...] = tuple(e for e in TRANSITIONS if e != "create")


#: Signs of life: events that change nothing but the time a job was last heard from. They are not
#: transitions (no state change, no history entry, no revision), so they are kept out of TRANSITIONS.
SIGNALS: frozenset[str] = frozenset({"heartbeat"})
#: States in which a job is at work and a heartbeat means something (as for ``update``).
HEARTBEAT_STATES: frozenset[State] = frozenset({S.CREATED, S.RUNNING, S.VALIDATING, S.INDEXING})
#: States a job stays in for good unless an admin resets it: what retention may purge.
TERMINAL_STATES: frozenset[State] = frozenset({S.RETIRED, S.FAILED, S.REJECTED, S.FINALIZED})


def is_signal(event: str) -> bool:
    return event in SIGNALS


def accepts_heartbeat(state: str) -> bool:
    return state in {s.value for s in HEARTBEAT_STATES}


def source_states(event: str) -> frozenset[State]:
    return TRANSITIONS[event][0]


def target_state(event: str, current: State) -> State:
    """The state after ``event`` is applied in ``current`` (which must allow it)."""
    target = TRANSITIONS[event][1]
    return current if target is None else target


def allows(state: str, event: str) -> bool:
    return event in TRANSITIONS and state in {s.value for s in TRANSITIONS[event][0]}


def allowed_events(state: str) -> list[str]:
    """Message events the given state accepts, in table order (for error messages)."""
    return [e for e in MESSAGE_EVENTS if allows(state, e)]


#: States a job reaches only after its compute job is over: a scheduler status arriving then is late.
PAST_COMPUTE: frozenset[str] = frozenset(
    s.value for s in (S.FINISHED, S.FAILED, S.INDEXING, S.VALIDATING, S.VALIDATED, S.REJECTED, S.FINALIZED, S.RETIRED)
)
#: Agave v2 and Tapis v3 job statuses that come before a job runs: late once the job is RUNNING.
BEFORE_RUNNING: frozenset[str] = frozenset(
    {
        "CREATED",
        "PENDING",
        "PROCESSING_INPUTS",
        "STAGING_INPUTS",
        "STAGED",
        "STAGING_JOB",
        "SUBMITTING",
        "SUBMITTING_JOB",
        "QUEUED",
    }
)


def is_stale(state: str, event: str, *, scheduler: bool, status: str | None = None) -> bool:
    """True for a scheduler callback that the job is already past.

    Schedulers deliver statuses late and out of order: an Agave RUNNING after FINISHED,
    a QUEUED after RUNNING, anything after RETIRED. Such a callback is recorded and
    answered, never applied and never an error. ``scheduler``: the event came from a
    scheduler or workflow engine (an intake format that says so, ``adapters.is_scheduler``);
    ``status`` is the scheduler's own status word, when known. Events from people and
    actors are judged by the table alone.
    """
    if not scheduler:
        return False
    if state in PAST_COMPUTE and not allows(state, event):
        return True
    late_status = (status or "").strip().upper() in BEFORE_RUNNING
    return late_status and (state == S.RUNNING.value or state in PAST_COMPUTE)
