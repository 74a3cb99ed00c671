"""Intake formats: one module per format, registered here, in the order a message is tried against them.

``messages.classify`` loops over this registry; nothing else in the core names a format.
Adding a format is one new module (see ``base.py`` for what it declares), its test fixtures,
and one line below. A module is imported the first time a message reaches it in the loop,
so a process that only ever handles native events never imports the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from functools import cache
from typing import cast

from .base import Adapter

REGISTRY: tuple[str, ...] = (
    "native",  # PipelineJobEvent, PipelineJobDeleteAction, PipelineJobAction as the body
    "agave",  # Agave v2 job notification callbacks (a status URL parameter)
    "tapis",  # Tapis v3 job notifications (an event object)
    "nextflow",  # Nextflow weblog posts (runId, runName and an event word)
    "url_params",  # a PipelineJobEvent by URL parameters, the body as its data
    "snakemake",  # Snakemake's panoptes protocol, on serve's /snakemake route only
)


@cache
def adapter(name: str) -> Adapter:
    """The registered format ``name``, imported on first use."""
    if name not in REGISTRY:
        raise KeyError(name)
    return cast(Adapter, importlib.import_module(f"{__name__}.{name}"))


def on_channel(channel: str) -> Iterator[Adapter]:
    """The formats that may arrive on ``channel``, in registry order, each imported when reached."""
    for name in REGISTRY:
        found = adapter(name)
        if channel in found.CHANNELS:
            yield found


def scheduler_sources() -> frozenset[str]:
    """The ``via`` of every format whose events report a scheduler's or engine's view of a compute job:
    such an event arriving after the job moved past it is logged as stale, not refused (``fsm.is_stale``)."""
    return frozenset(adapter(name).VIA for name in REGISTRY if adapter(name).SCHEDULER)


def is_scheduler(via: str) -> bool:
    """Whether events that came ``via`` a format are a scheduler's (see :func:`scheduler_sources`).

    A scheduler format's module is named after its ``via`` (a test holds every format to it), so
    this imports that module only: judging a person's or an actor's event imports no format.
    """
    return via in REGISTRY and adapter(via).SCHEDULER
