"""How hard the dispatcher tries: config.yml's ``notifications`` section as numbers."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ..settings import Settings


class Budget(NamedTuple):
    """How hard the dispatcher tries (config.yml ``notifications``; a null value takes the default).

    Attempt n (1-based) that fails is retried after a pause drawn uniformly from
    [0, min(cap, base * 2**(n-1))] ("full jitter"); after ``max_attempts`` the item is given up.
    With the defaults (8 attempts, base 60 s, cap 30 min) the pauses add up to at most 91 min,
    about 45 min on average.
    """

    max_attempts: int = 8
    backoff_base_seconds: float = 60.0
    backoff_cap_seconds: float = 1800.0
    timeout_seconds: float = 10.0  # one attempt, all of it: connecting, sending, the answer
    lease_seconds: float = 120.0  # how long a claimed batch is the claimer's (a crashed one's expires)
    every_seconds: float = 2.0  # serve's dispatcher looks at the outbox this often (0: no dispatcher)
    refresh_seconds: float = 5.0  # a running process rereads the subscription list this often
    batch: int = 100  # items claimed at once
    grace_seconds: float = 30.0  # MongoDB: a logged event not applied after this is rolled forward
    delivery_days: int = 30  # delivery records are kept this long
    workers: int = 1  # deliveries of one batch in flight at once (threads; serial is cheapest beside serve)


def budget(settings: Settings) -> Budget:
    """The ``notifications`` section as a :class:`Budget` (typed and checked at load: ``settings_schema``)."""
    return Budget(**{name: settings.value("notifications", name) for name in Budget._fields})


def backoff(attempts: int, plan: Budget, draw: Callable[[float, float], float] | None = None) -> float:
    """Seconds to wait after ``attempts`` failed attempts: full jitter under a capped exponential."""
    import random

    draw = draw or random.uniform
    ceiling = min(plan.backoff_cap_seconds, plan.backoff_base_seconds * 2 ** max(0, attempts - 1))
    return draw(0.0, ceiling)
