"""`make bench`'s snakemake part: a Snakemake run of 200 trivial rules reporting to serve,
over the same run without ``--logger``.

Whole ``snakemake`` processes (import, DAG, 200 ``touch`` jobs on 2 cores), timed by wall clock and
interleaved: a run with no logger, a run reporting to `pipelinejobs serve` on the embedded store, one
reporting to serve on MongoDB; ROUNDS rounds, medians compared. The panoptes plugin posts each report
synchronously (about 5 per rule job), so serve's answer time is all the workflow pays. Each reporting run
makes a job of its own (its address names the pipeline); the bench checks it ended FINISHED with every
step counted and a task record per rule job, and counts a run that did not as a problem.

    .venv/bin/python bench/engines.py [ROUNDS]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from harness import (  # bench/ is not a package: found through run.py's path
    ACTOR,
    HEADERS,
    PIPELINE,
    Backend,
    Ratio,
    drop_databases,
    embedded_backend,
    job_store,
    median,
    mongodb,
    mongodb_backend,
    serve,
    spread,
)

RULES = 200
ROUNDS = 3
TARGET = 1.3


def snakefile() -> str:
    rules = [f"rule all:\n    input: [f'out/r{{i}}.txt' for i in range({RULES})]\n"]
    rules += [f'rule r{i}:\n    output: "out/r{i}.txt"\n    shell: "touch {{output}}"\n' for i in range(RULES)]
    return "\n".join(rules)


def run_workflow(workdir: Path, address: str | None) -> float:
    """One whole run in a fresh copy of the workflow directory; its wall time in seconds."""
    shutil.rmtree(workdir / "out", ignore_errors=True)
    shutil.rmtree(workdir / ".snakemake", ignore_errors=True)
    command = [sys.executable, "-m", "snakemake", "--cores", "2"]
    if address is not None:
        command += ["--logger", "panoptes", "--logger-panoptes-address", address]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(workdir), "XDG_CACHE_HOME": str(workdir / ".cache")}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"snakemake exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def check_jobs(base: str, pipeline: str, runs: int) -> list[str]:
    """Every reporting run's job: FINISHED, all steps done, one job_info task record per rule job."""
    problems: list[str] = []
    listed = httpx.get(f"{base}/jobs", params={"pipeline": pipeline, "limit": 100}, headers=HEADERS, timeout=30)
    jobs = listed.json()["result"]["jobs"]
    if len(jobs) != runs:
        problems.append(f"snakemake: {runs} reporting runs made {len(jobs)} jobs")
    for summary in jobs:
        uuid = summary["uuid"]
        job = httpx.get(f"{base}/jobs/{uuid}", headers=HEADERS, timeout=30).json()["result"]
        progress = job.get("progress") or {}
        if job["state"] != "FINISHED" or progress.get("done") != RULES + 1 or progress.get("total") != RULES + 1:
            problems.append(f"snakemake: job {uuid} is {job['state']} with progress {progress}")
        events = httpx.get(f"{base}/jobs/{uuid}/events", params={"limit": 1000}, headers=HEADERS, timeout=30)
        infos = sum(1 for e in events.json()["result"]["events"] if e["name"] == "job_info")
        if infos != RULES + 1:
            problems.append(f"snakemake: job {uuid} has {infos} job_info records, not {RULES + 1}")
    return problems


def address_of(messages_url: str, backend: Backend) -> tuple[str, str]:
    """(serve's base URL, the Snakemake address of a new job per run of the bench's pipeline)."""
    base = messages_url.split("/actors/")[0]
    nonce = httpx.post(f"{base}/actors/v2/{ACTOR}/nonces", headers=HEADERS, json={"level": "EXECUTE"}, timeout=30)
    nonce.raise_for_status()
    with job_store(backend) as store:
        store.save_pipeline(dict(PIPELINE))
    return base, f"{base}/snakemake/{nonce.json()['result']['id']}/pipeline/{PIPELINE['uuid']}"


def bench_snakemake(workdir: Path, uri: str, rounds: int = ROUNDS) -> tuple[list[Ratio], list[str]]:
    print(f"\nsnakemake: {RULES} trivial rules (touch), --cores 2, reporting to serve or not; {rounds} rounds")
    flow = workdir / "snakemake-flow"
    flow.mkdir()
    (flow / "Snakefile").write_text(snakefile())
    stores = {"embedded": embedded_backend(workdir / "snakemake-embedded")}
    stores["mongodb"] = mongodb_backend(workdir / "snakemake-mongodb", uri)
    for backend in stores.values():
        backend.workdir.mkdir()
    times: dict[str, list[float]] = {"plain": [], **{name: [] for name in stores}}
    problems: list[str] = []
    try:
        with serve(stores["embedded"]) as embedded_url, serve(stores["mongodb"]) as mongo_url:
            urls = {"embedded": embedded_url, "mongodb": mongo_url}
            addresses = {name: address_of(urls[name], backend) for name, backend in stores.items()}
            run_workflow(flow, None)  # warm the file system and Python's caches once, uncounted
            for _ in range(rounds):
                times["plain"].append(run_workflow(flow, None))
                for name, (_, address) in addresses.items():
                    times[name].append(run_workflow(flow, address))
            for _, (base, _) in addresses.items():
                problems += check_jobs(base, PIPELINE["uuid"], rounds)
    finally:
        drop_databases(uri, [str(stores["mongodb"].database)])
    for name, seconds in times.items():
        print(spread(f"snakemake run, {'no logger' if name == 'plain' else 'reporting to serve, ' + name}", seconds))
    plain = median(times["plain"])
    ratios = [
        Ratio(f"snakemake {RULES} rules to serve / no logger, {name}", median(times[name]), plain, "s", TARGET, True)
        for name in stores
    ]
    return ratios, problems


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS
    with tempfile.TemporaryDirectory(prefix="pjbench-snakemake-") as tmp, mongodb(Path(tmp)) as uri:
        ratios, problems = bench_snakemake(Path(tmp), uri, rounds)
    print()
    for ratio in ratios:
        print(ratio.row())
    for problem in problems:
        print(f"BUG: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
