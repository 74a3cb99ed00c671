"""`make bench`'s notify part: serve's events/s with one active webhook subscription ÷ without.

Two stores of the same kind (two SQLite files, or two databases on one MongoDB-wire
server), each with its own `pipelinejobs serve`: on one, a subscription to the bench's
pipeline sends every event to a receiver on loopback (a separate process answering 204);
the other has no subscription. Both run `--workers 2`, as the throughput part does, so the
dispatcher runs in the supervisor process. Bursts of 8 clients alternate between the two. A burst
with the subscription counts until the receiver has every event it accepted (the
dispatcher's lag after the burst is added to its time) in a second ratio, so the first
(events/s during the bursts, as issue 10 asks) cannot hide a backlog left behind.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from harness import (  # bench/ is not a package: found through run.py's path
    HEADERS,
    PIPELINE,
    Backend,
    Job,
    KeepAlive,
    Ratio,
    free_port,
    job_store,
    median,
    new_job,
    send_update,
    serve,
    stop,
    timed_burst,
    wait_until,
)

ROUNDS = 5
#: issue 22: webhooks go through httpx (a pooled transport) instead of a hand-written HTTP/1.1 client, whose POST
#: cost about a quarter of the CPU; the dispatcher shares serve's cores, so the target is restated from 0.8x
TARGET = 0.7
BURST = 2.0
CLIENTS = 8
WORKERS = 2  # as the throughput part runs serve (one per core); the dispatcher then runs in the supervisor
DRAIN_TIMEOUT = 120.0
# the receiver: a loopback HTTP/1.1 server on asyncio that counts POSTs and answers 204 (GET: the count);
# it shares the two cores with serve, so it is kept to the least work an HTTP answer takes
RECEIVER = r"""
import asyncio, sys
count = 0
class Receiver(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        global count
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            if head.startswith("GET"):
                body = str(count).encode()
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            else:
                count += 1
                self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
async def main():
    server = await asyncio.get_running_loop().create_server(Receiver, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
asyncio.run(main())
"""


def _received(base: str) -> int:
    return int(httpx.get(base, timeout=5).text)


def _burst(url: str, jobs: list[Job], seconds: float) -> tuple[int, float]:
    """8 clients, a job each, for ``seconds``: (events sent, elapsed)."""
    clients = [KeepAlive(url, HEADERS) for _ in jobs]
    try:
        ops = [
            (lambda i, http=http, job=job: send_update(http, url, job, i))
            for http, job in zip(clients, jobs, strict=True)
        ]
        return timed_burst(ops, seconds)
    finally:
        for client in clients:
            client.close()


def bench_notify(plain: Backend, notified: Backend) -> tuple[list[Ratio], dict[str, list[Job]]]:
    """Throughput of serve with one webhook subscription over without, on ``plain``'s kind of store."""
    from pipelinejobs.notify import dispatcher, subscriptions

    print(f"\nnotifications: one webhook subscription, {notified.label}")
    port = free_port()
    receiver_base = f"http://127.0.0.1:{port}/"
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: httpx.get(receiver_base, timeout=1).status_code == 200, proc, "the receiver")
        sets: dict[str, list[list[Job]]] = {}
        for side, backend in (("plain", plain), ("notified", notified)):
            with job_store(backend) as store:
                store.save_pipeline(dict(PIPELINE))
                settings = backend.settings()
                sets[side] = [[new_job(store, settings, 2) for _ in range(CLIENTS)] for _ in range(ROUNDS + 1)]
                if side == "notified":  # after the jobs' `run`s: only the bursts' events are notified
                    sub = subscriptions.new_subscription(
                        now=dispatcher.utc_now(), pipeline_uuid=PIPELINE["uuid"], url=receiver_base + "hook"
                    )
                    subscriptions.add_subscription(store, settings, sub)
        with serve(plain, WORKERS) as plain_url, serve(notified, WORKERS) as notified_url:
            rates = _rounds(plain_url, notified_url, sets, receiver_base)
        delivered = _received(receiver_base)
    finally:
        stop(proc)
    plain_rates, notified_rates, burst_rates, lags = rates
    print(f"  serve without subscriptions, events/s per burst: {', '.join(f'{r:.0f}' for r in plain_rates)}")
    print(f"  serve with one webhook subscription, during the burst: {', '.join(f'{r:.0f}' for r in burst_rates)}")
    print(f"  the same counted until every event was delivered: {', '.join(f'{r:.0f}' for r in notified_rates)}")
    print(f"  dispatcher lag after a burst, s: {', '.join(f'{lag:.2f}' for lag in lags)}")
    accepted = sum(job.accepted for group in sets["notified"] for job in group) - CLIENTS * (ROUNDS + 1)
    print(f"  receiver: {delivered:,} notifications for {accepted:,} accepted events (the 'run's came before)")
    note = "" if delivered >= accepted else f"{accepted - delivered} accepted events were never delivered"
    jobs = {side: [job for group in groups for job in group] for side, groups in sets.items()}
    ratios = [
        Ratio(
            f"serve with / without a webhook sub., {plain.name}",
            median(burst_rates),
            median(plain_rates),
            "ev/s",
            TARGET,
            False,
            note,
        ),
        Ratio(
            f"  the same, until all delivered, {plain.name}",
            median(notified_rates),
            median(plain_rates),
            "ev/s",
            TARGET,
            False,
            note,
        ),
    ]
    return ratios, jobs


def _rounds(
    plain_url: str, notified_url: str, sets: dict[str, list[list[Job]]], receiver: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    plain_rates: list[float] = []
    notified_rates: list[float] = []
    burst_rates: list[float] = []
    lags: list[float] = []
    sent = {"total": 0}

    def run_plain(r: int) -> None:
        count, elapsed = _burst(plain_url, sets["plain"][r], BURST)
        if r:
            plain_rates.append(count / elapsed)

    def run_notified(r: int) -> None:
        count, elapsed = _burst(notified_url, sets["notified"][r], BURST)
        sent["total"] += count
        start = time.perf_counter()
        deadline = start + DRAIN_TIMEOUT
        while _received(receiver) < sent["total"] and time.perf_counter() < deadline:
            time.sleep(0.01)
        lag = time.perf_counter() - start
        if r:
            burst_rates.append(count / elapsed)
            notified_rates.append(count / (elapsed + lag))
            lags.append(lag)

    for r in range(ROUNDS + 1):  # round 0 warms up both servers
        sides: list[Callable[[int], None]] = [run_plain, run_notified]
        for run in sides if r % 2 == 0 else reversed(sides):
            run(r)
    return plain_rates, notified_rates, burst_rates, lags


def backends_for(kind: str, workdir: Path, uri: str | None) -> tuple[Backend, Backend]:
    """Two stores of one kind: without and with the subscription."""
    from harness import embedded_backend, mongodb_backend

    pair: list[Any] = []
    for side in ("plain", "notified"):
        where = workdir / f"notify-{kind}-{side}"
        where.mkdir()
        pair.append(embedded_backend(where) if kind == "embedded" else mongodb_backend(where, uri or ""))
    pair[1].env["_REACTOR_NOTIFICATIONS_ALLOWED_NETWORKS"] = "127.0.0.0/8"  # the receiver is on this host
    return pair[0], pair[1]
