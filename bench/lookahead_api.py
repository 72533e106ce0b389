"""GitLab API calls the pool's lookahead makes (issue 19): per pipeline and per minute.

    .venv/bin/python -m bench.lookahead_api --pipelines 150 --concurrent 50

The real reader (driver.pool.gitlab_jobs: GraphQL, REST as its fallback) and the
real pipeline watch, against the fake GitLab (testing/fake_gitlab.py) on
loopback, on a virtual clock ticking every 2 s (the pool's check_interval).
Pipelines start one every (pipeline length / --concurrent) seconds, so about
--concurrent run at once; each is GitLab's default shape: build (1 job,
5 min), test (--fan-out jobs, 5-10 min), deploy (1 job, 2 min), every job
taken by this runner 5 s after its stage starts. Counted: every HTTP request
the reader makes (the clients' response hooks), in three modes:

  graphql   the default: one GraphQL request per look (100 jobs a page)
  rest      GitLab refuses the GraphQL query: the REST list and /bridges
  rest20    the same, 20 jobs a page (GitLab's default, which the lookahead
            asked before it asked for 100)
  webhook   graphql, with a webhook event for every job status change (each
            asks for a look at the next tick; the timed looks every 300 s)
  shared    webhook, with two runner managers: each job taken by this one or
            the other (half each, at random), GitLab's pipeline events too,
            and `[gitlab] watch_heard_pipelines = false`
  heard     the same with watch_heard_pipelines (the default with the webhook):
            the pipelines heard of are watched too

Per minute is counted over the steady part, when --concurrent pipelines run.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from driver.pool.gitlab_api import PER_PAGE
from driver.pool.gitlab_jobs import GitLabJobs
from driver.pool.lookahead import Lookahead
from driver.pool.pipelines import HEARD_RECHECK, PipelineWatch
from driver.settings import GitLabSettings
from testing.fake_gitlab import FakeGitLab

TOKEN = "glpat-bench"
PROJECT = 40
EPOCH = 1_800_000_000.0  # the virtual clock's start (a Unix time: GitLab's ISO dates)
TICK = 2.0  # the pool's check_interval
PICKUP = 5.0  # seconds from a job's stage start to this runner taking it


@dataclass
class Job:
    id: int
    stage: str
    name: str
    duration: float
    start: float = 0.0  # virtual seconds, set once the pipeline is laid out


def lay_out(pipeline: int, begin: float, fan_out: int) -> list[Job]:
    """One pipeline's jobs, each starting when the stage before it ends."""
    base = pipeline * 10_000  # ids of its own, whatever --fan-out
    stages = [
        [Job(base + 1, "build", "build", 300.0)],
        [
            Job(base + 2 + n, "test", f"test {n}", 300.0 + 300.0 * n / fan_out)
            for n in range(fan_out)
        ],
        [Job(base + 9_999, "deploy", "deploy", 120.0)],
    ]
    at = begin
    for stage in stages:
        for job in stage:
            job.start = at
        at += PICKUP + max(job.duration for job in stage)
    return [job for stage in stages for job in stage]


def status(job: Job, t: float) -> str:
    if t < job.start:
        return "created"
    if t < job.start + PICKUP:
        return "pending"
    return "running" if t < job.start + PICKUP + job.duration else "success"


def iso(t: float) -> str:
    return datetime.fromtimestamp(EPOCH + t, UTC).isoformat().replace("+00:00", "Z")


def run(mode: str, pipelines: int, concurrent: int, fan_out: int) -> dict[str, float]:
    with FakeGitLab(TOKEN) as gitlab:
        length = lay_out(0, 0.0, fan_out)[-1].start + PICKUP + 120.0
        every = length / concurrent
        laid = {p: lay_out(p, p * every, fan_out) for p in range(1, pipelines + 1)}
        gitlab.finished[PROJECT] = [
            {"id": job.id, "name": job.name, "status": "success", "duration": job.duration}
            for job in laid[1]
        ]
        if mode in ("rest", "rest20"):
            gitlab.graphql_errors = ["Field 'jobs' doesn't accept argument 'whenExecuted'"]
        per_page = 20 if mode == "rest20" else PER_PAGE
        reader = GitLabJobs(GitLabSettings(url=gitlab.url, token=TOKEN), per_page=per_page)
        lookahead = Lookahead()
        watch = PipelineWatch(lookahead, reader.list_jobs, lambda m: None, reader.usual_durations)
        events = mode in ("webhook", "shared", "heard")
        if events:
            watch.recheck = HEARD_RECHECK  # as driver.pool.webhook.start sets it
            watch.watch_heard = mode != "shared"  # [gitlab] watch_heard_pipelines
        shared = mode in ("shared", "heard")
        here = {j.id for jobs in laid.values() for j in jobs}
        if shared:  # the same draw in both modes
            here = {i for i in sorted(here) if random.Random(i).random() < 0.5}
        pipeline_seen: dict[int, str] = {}
        steady = (length, pipelines * every)  # when `concurrent` pipelines run at once
        calls_at_steady = [0, 0]
        seen: dict[int, str] = {}
        end = pipelines * every + length + 60.0
        wall = time.monotonic()
        t = 0.0
        while t <= end:
            for p, jobs in laid.items():
                if jobs[0].start > t + TICK or t > jobs[-1].start + length:
                    continue  # not yet started, or long done
                gitlab.pipelines[(PROJECT, p)] = [
                    {
                        "id": job.id,
                        "status": status(job, t),
                        "stage": job.stage,
                        "name": job.name,
                        "tag_list": [],
                        "started_at": iso(job.start + PICKUP) if t >= job.start + PICKUP else None,
                    }
                    for job in jobs
                ]
                for job in jobs:
                    now = status(job, t)
                    came = now == "running" and seen.get(job.id) in (None, "created", "pending")
                    if came and job.id in here:
                        watch.job_arrived(PROJECT, p, job.id, EPOCH + t, hit=True)
                    if events and seen.get(job.id, "created") != now:
                        watch.heard(p, job.id, now, EPOCH + t)
                    seen[job.id] = now
                statuses = {status(job, t) for job in jobs}
                overall = "success" if statuses == {"success"} else "running"
                overall = "pending" if statuses <= {"created", "pending"} else overall
                # A Pipeline Hook; GitLab queues the first stage as it makes the pipeline.
                if shared and statuses != {"created"} and pipeline_seen.get(p) != overall:
                    watch.heard(p, None, overall, EPOCH + t, PROJECT)
                    pipeline_seen[p] = overall
            watch.poll(EPOCH + t)
            total = reader.calls.total()
            if t <= steady[0]:
                calls_at_steady[0] = total
            if t <= steady[1]:
                calls_at_steady[1] = total
            t += TICK
        calls = reader.calls.snapshot()
        report = lookahead.report()
        minutes = (steady[1] - steady[0]) / 60.0
        return {
            "calls": float(sum(calls.values())),
            "graphql": float(calls.get("graphql", 0)),
            "rest": float(calls.get("rest", 0)),
            "per_pipeline": sum(calls.values()) / pipelines,
            "per_minute": (calls_at_steady[1] - calls_at_steady[0]) / minutes,
            "wall": time.monotonic() - wall,
            "here": float(len(here)),
            "announced": float(len(report.leads)),  # of those here, announced before
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=150)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--fan-out", type=int, default=4, help="jobs in the test stage (<9997)")
    parser.add_argument("--modes", default="graphql,rest,webhook,shared,heard")
    args = parser.parse_args()
    print(
        f"{args.pipelines} pipelines, about {args.concurrent} at once, "
        f"{args.fan_out + 2} jobs each (build, {args.fan_out} tests, deploy)"
    )
    print(
        f"{'mode':8}  {'API calls':>9}  {'graphql':>7}  {'rest':>5}  "
        f"{'per pipeline':>12}  {'per minute':>10}  {'wall s':>6}  announced ahead"
    )
    base = None
    for mode in args.modes.split(","):
        r = run(mode, args.pipelines, args.concurrent, args.fan_out)
        base = base or r["per_pipeline"]
        print(
            f"{mode:8}  {r['calls']:9.0f}  {r['graphql']:7.0f}  {r['rest']:5.0f}  "
            f"{r['per_pipeline']:12.1f}  {r['per_minute']:10.1f}  {r['wall']:6.1f}"
            f"  {r['announced']:.0f} of {r['here']:.0f} jobs here"
            f"   ({r['per_pipeline'] / base:.2f}x graphql per pipeline)"
        )


if __name__ == "__main__":
    main()
