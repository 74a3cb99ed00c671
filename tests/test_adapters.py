"""The intake-format registry: every format declares what the core needs, and the core names none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelinejobs import adapters
from pipelinejobs.errors import PipelineJobsError
from pipelinejobs.intake import Intake
from pipelinejobs.messages import EventMessage, ReportMessage, classify
from tests.conftest import ROOT

NEXTFLOW = Path(__file__).parent / "fixtures" / "nextflow"
JOB = "107b93f3-1eae-5e79-8a18-0a480f8aa3a5"
TOKEN = "0dc73dc3ff39b49a"


@pytest.mark.parametrize("name", adapters.REGISTRY)
def test_each_format_declares_what_the_core_needs(name: str) -> None:
    module = adapters.adapter(name)
    assert isinstance(module.VIA, str) and module.VIA
    assert isinstance(module.SCHEDULER, bool)
    assert module.CHANNELS and all(isinstance(channel, str) for channel in module.CHANNELS)
    assert callable(module.recognise) and callable(module.to_message)
    if module.SCHEDULER:  # adapters.is_scheduler imports only the module named after a via
        assert name == module.VIA


def test_scheduler_sources_come_from_the_registry() -> None:
    assert adapters.scheduler_sources() == {"agave", "tapis", "nextflow", "snakemake"}
    assert all(adapters.is_scheduler(via) for via in ("agave", "tapis", "nextflow", "snakemake"))
    assert not any(adapters.is_scheduler(via) for via in ("message", "url", "watchdog", "create", "native"))


def test_a_weblog_post_is_recognised_by_its_body_on_the_messages_channel() -> None:
    body = json.loads((NEXTFLOW / "process_completed.json").read_text())
    report = classify(Intake(body=body, content_type="application/json", params={"uuid": JOB, "token": TOKEN}))
    assert isinstance(report, ReportMessage) and (report.via, report.name, report.effect) == (
        "nextflow",
        "process_completed",
        None,
    )
    assert report.uuid == JOB and report.token == TOKEN and report.event_id and report.event_id.startswith("nextflow:")
    again = classify(Intake(body=dict(body), content_type="application/json", params={"uuid": JOB}))
    assert isinstance(again, ReportMessage) and again.event_id == report.event_id  # one body, one delivery id
    changed = classify(Intake(body={**body, "utcTime": "2026-12-01T09:33:27Z"}, content_type="", params={"uuid": JOB}))
    assert isinstance(changed, ReportMessage) and changed.event_id != report.event_id


def test_native_messages_are_still_tried_first() -> None:
    event = {"uuid": JOB, "name": "run", "token": TOKEN}
    assert isinstance(classify(Intake(body=event, content_type="application/json")), EventMessage)


def test_an_engine_route_only_hears_its_own_format() -> None:
    event = {"uuid": JOB, "name": "run", "token": TOKEN}
    with pytest.raises(PipelineJobsError) as refused:
        classify(Intake(body=event, content_type="application/json", channel="nextflow"))
    assert set(refused.value.details["candidates"]) == {"Nextflow weblog post"}


def test_judging_a_native_event_imports_no_format_but_its_own() -> None:
    """reactor.py starts a process per message: a native event must not import the engines' formats."""
    code = (
        "import sys\n"
        "from pipelinejobs import adapters\n"
        "from pipelinejobs.intake import Intake\n"
        "from pipelinejobs.messages import classify\n"
        f"classify(Intake(body={{'uuid': '{JOB}', 'name': 'run', 'token': '{TOKEN}'}}, content_type='str'))\n"
        "assert not adapters.is_scheduler('message')\n"
        "print(sorted(m.rsplit('.', 1)[-1] for m in sys.modules if m.startswith('pipelinejobs.adapters.')))\n"
    )
    shown = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert shown.stdout.split() == ["['base',", "'native']"]
