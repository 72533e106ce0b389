"""The built-in week of jobs, with knobs for the pipeline shapes GitLab runs.

Pipelines arrive as a Poisson process whose rate follows the weekday curve
WEEKDAY (quiet night, a morning ramp to the peak by 9:30, a lunch dip, the
evening ramp down) times `peak_pipelines` per hour; Saturday and Sunday stay
at WEEKEND of the peak. Each pipeline has 1 to `stages` stages; a stage
starts ceil(X) jobs, X log-normal (median `fanout_median`, or
`first_stage_median` for the first of several; log-sd `fanout_sigma`), picked
up over `pickup` seconds. Each job has a usual duration (log-normal, median
`job_median`, p95 `job_p95`), and this run takes that times a log-normal of
log-sd `duration_spread`. A stage fails with `stage_failure`: the jobs after
it are skipped (announced, never run).

With `projects` N > 0, each pipeline belongs to one of N projects (picked
at random), and a project's staged pipelines keep its shape: how many
stages, how many jobs each, and each job's usual duration are drawn once per
project (each run still takes its usual times the spread, and still fails
with `stage_failure`). With 0 (the standard week) every pipeline draws its
own: there is no shape to learn beyond the whole week's.

The knobs (shares, 0 by default) reshape that week as GitLab does:

  dag         pipelines whose jobs use `needs:`: each job waits for one or two
              jobs of the stage before, not the whole stage
  chains      stageless pipelines: a chain of jobs, each needing the one before
  managers    runner managers sharing the tags: each job goes to this one with
              chance 1/managers, the rest start elsewhere (withdrawn then)
  manual      later jobs that are `when: manual` (half of them played, 1-30
              minutes later); never announced, no job waits for them
  on_failure  pipelines ending with a `when: on_failure` job (runs only after a
              failure); never announced
  delayed     later jobs that are `when: delayed` (start_in 1-10 min); not
              announced before they are due
  children    pipelines whose second stage is a child pipeline (`trigger:` with
              `strategy: depend`): the stage after it waits for the child
  cancel      pipelines canceled while they run: what has not started never
              does, and is withdrawn when the service looks next (`poll` s)
  retry       jobs that fail and are retried: a new job (unannounced) after them

And two switches (0 or 1): `watch_all` 1 announces a job when the first job it
waits for arrives at ANY runner manager, as the pool service does with a group
webhook's pipeline events (`[gitlab] watch_heard_pipelines`); 0, only when it
arrives here. `exact` 1 predicts each announced job's arrival exactly, which
no GitLab can tell (a job runs its usual duration give or take): what the
lookahead's prediction errors cost, by comparison with 0.

What the pool service learns of a job (the lookahead, as driver.pool.pipelines
does with GitLab's needs): a job is announced when the first job it waits for
(the stage before it, or its `needs:`) arrives here (or anywhere, with
`watch_all`), predicted to arrive when the last of them should end (arrival
plus usual duration).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

from driver.pool.replay.trace import NEVER, WEEK, LogNormal, Trace, TraceJob

# Weekday pipeline rate, as a share of the peak: (hour, level), linear in between.
WEEKDAY = (
    (0.0, 0.02),
    (6.0, 0.02),
    (7.0, 0.15),
    (9.5, 1.0),
    (12.0, 1.0),
    (12.5, 0.45),
    (13.5, 0.45),
    (14.0, 1.0),
    (17.0, 0.9),
    (19.0, 0.2),
    (22.0, 0.05),
    (24.0, 0.02),
)
WEEKEND = 0.03
WORKING_HOURS = "* * 8-17 * * mon-fri *"  # docker+machine's cron: 8:00 to 17:59


@dataclass(frozen=True)
class Shape:
    """The week's knobs (see the module docstring)."""

    peak_pipelines: float = 30.0  # per hour at the peak
    stages: int = 3
    first_stage_median: float = 1.0
    fanout_median: float = 2.0
    fanout_sigma: float = 1.0
    fanout_max: int = 64
    pickup: float = 5.0
    job_median: float = 300.0
    job_p95: float = 1200.0
    duration_spread: float = 0.3
    stage_failure: float = 0.1
    days: float = 7.0
    dag: float = 0.0
    chains: float = 0.0
    managers: int = 1
    manual: float = 0.0
    on_failure: float = 0.0
    delayed: float = 0.0
    children: float = 0.0
    cancel: float = 0.0
    retry: float = 0.0
    poll: float = 30.0
    projects: int = 0
    watch_all: int = 0  # 1: a job is announced when one it waits for came to any manager
    exact: int = 0  # 1: an announced job is predicted to arrive when it does


def week_level(seconds: float) -> float:
    """The pipeline rate at `seconds` into the week, as a share of the peak."""
    day, second = divmod(seconds, 86400.0)
    if day % 7 >= 5:
        return WEEKEND
    hour = second / 3600.0
    for (h0, v0), (h1, v1) in itertools.pairwise(WEEKDAY):
        if h0 <= hour <= h1:
            return v0 + (v1 - v0) * (hour - h0) / (h1 - h0)
    return WEEKDAY[-1][1]


@dataclass(eq=False)
class _Node:
    """One job of a pipeline being drawn."""

    pipeline: int
    stage: int
    usual: float
    duration: float
    create: float
    waits: list[_Node] = field(default_factory=list)  # jobs it starts after
    announceable: bool = True  # False: nobody can announce it ahead
    arrival: float = 0.0
    runs: bool = True
    here: bool = True
    retry: _Node | None = None
    project: int = 0

    @property
    def end(self) -> float:
        return self.arrival + self.duration

    def after(self) -> list[_Node]:
        """The jobs it starts after, their retries with them."""
        return [w for n in self.waits for w in (n, n.retry) if w is not None]


class _Week:
    def __init__(self, shape: Shape, seed: int, creates: LogNormal, claim: float) -> None:
        self.shape, self.creates, self.claim = shape, creates, claim
        self.rng = random.Random(seed)
        self.durations = LogNormal(shape.job_median, shape.job_p95)
        self.pipelines = 0
        self.nodes: list[_Node] = []
        self.seed = seed
        self.templates: dict[int, list[list[float]]] = {}  # per project: its stages' usuals

    def chance(self, share: float) -> bool:
        """A draw only where the knob is set: the standard week stays as it was."""
        return share > 0 and self.rng.random() < share

    def job(
        self,
        pipeline: int,
        stage: int,
        start: float,
        waits: list[_Node],
        usual: float | None = None,
    ) -> _Node:
        rng = self.rng
        arrival = start + rng.uniform(0.0, self.shape.pickup)
        usual = self.durations.draw(rng) if usual is None else usual
        duration = usual * rng.lognormvariate(0.0, self.shape.duration_spread)
        node = _Node(pipeline, stage, usual, duration, self.creates.draw(rng), waits)
        node.arrival = arrival
        return node

    def fanout(self, first: bool) -> int:
        shape = self.shape
        median = shape.first_stage_median if first else shape.fanout_median
        x = self.rng.lognormvariate(math.log(median), shape.fanout_sigma)
        return min(shape.fanout_max, math.ceil(x))

    def ends(self, nodes: list[_Node]) -> float:
        """When the last of `nodes` (and of their retries) should end."""
        done = [n for node in nodes for n in (node, node.retry) if n is not None]
        return max(n.arrival + self.claim + n.duration for n in done)

    def stage_jobs(
        self,
        pipeline: int,
        stage: int,
        start: float,
        before: list[_Node],
        first: bool,
        dag: bool,
        usuals: list[float] | None = None,
    ) -> list[_Node]:
        """A stage's jobs: all starting at `start`, or (`dag`) each when the one or two
        jobs of `before` it needs end; `usuals`: its project's jobs' usual durations."""
        nodes = []
        for i in range(self.fanout(first) if usuals is None else len(usuals)):
            waits, begin = before, start
            if dag and before:
                waits = self.rng.sample(before, min(len(before), self.rng.randint(1, 2)))
                begin = self.ends(waits)
            usual = None if usuals is None else usuals[i]
            nodes.append(self.job(pipeline, stage, begin, waits, usual))
        return nodes

    def project(self) -> tuple[int, list[list[float]] | None]:
        """The project of a new pipeline, and its stages' usual job durations (None:
        the standard week, every pipeline its own shape). Drawn from their own stream:
        a project's shape is the same whatever else the week draws."""
        if not self.shape.projects:
            return 0, None
        number = self.rng.randrange(self.shape.projects)
        if number not in self.templates:
            rng = random.Random(self.seed * 1009 + number)
            stages = rng.randint(1, self.shape.stages) if self.shape.stages > 1 else 1
            median = [self.shape.fanout_median] * stages
            if stages > 1:
                median[0] = self.shape.first_stage_median
            self.templates[number] = [
                [
                    self.durations.draw(rng)
                    for _ in range(
                        min(
                            self.shape.fanout_max,
                            math.ceil(rng.lognormvariate(math.log(m), self.shape.fanout_sigma)),
                        )
                    )
                ]
                for m in median
            ]
        return number + 1, self.templates[number]

    def pipeline(self, t: float) -> None:
        shape, rng = self.shape, self.rng
        self.pipelines += 1
        pid = self.pipelines
        if self.chance(shape.chains):
            self.chain(pid, t)
            return
        project, template = self.project()
        if template is not None:
            stages = len(template)
        else:
            stages = rng.randint(1, shape.stages) if shape.stages > 1 else 1
        dag = stages > 1 and self.chance(shape.dag)
        child = stages > 1 and self.chance(shape.children)
        start, runs, failed_at = t, True, math.nan
        before: list[_Node] = []
        made: list[_Node] = []
        for stage in range(stages):
            usuals = None if template is None else template[stage]
            first = stage == 0 and stages > 1
            nodes = self.stage_jobs(pid, stage, start, before, first, dag, usuals)
            for node in nodes:
                node.runs = runs
            made += nodes + self.extras(nodes, runs)
            end = self.ends(nodes) if nodes else start
            if child and stage == 0:
                every, nodes, end = self.child(nodes, end, runs)
                made += every
            # After a failed stage the later ones are skipped: announced, never run.
            if runs and stages > 1 and rng.random() < shape.stage_failure:
                runs, failed_at = False, end
            before, start = nodes, end
        if not runs and self.chance(shape.on_failure):
            # An on_failure job: runs once the failed stage ends; nobody announces it.
            node = self.job(pid, stages, failed_at, [])
            node.announceable = False
            made.append(node)
        for node in made:
            node.project = project
        self.finish(made, t)

    def extras(self, nodes: list[_Node], runs: bool) -> list[_Node]:
        """Retries, manual and delayed jobs among a stage's jobs; manual ones leave
        `nodes` (no job waits for them). Returns the jobs made beyond `nodes`."""
        shape, rng = self.shape, self.rng
        more = []
        for node in list(nodes):
            if runs and self.chance(shape.retry):
                again = self.job(node.pipeline, node.stage, node.end + self.claim, [node])
                again.announceable = False  # a retry is a new job, made when retried
                node.retry = again
                more.append(again)
            if node.stage > 0 and self.chance(shape.manual):
                nodes.remove(node)
                node.announceable = False
                node.runs = runs and rng.random() < 0.5
                node.arrival += rng.uniform(60.0, 1800.0)
                if node.runs:
                    more.append(node)
                if node.retry is not None:
                    more.remove(node.retry)
                    node.retry = None
                continue
            if node.stage > 0 and self.chance(shape.delayed):
                node.announceable = False  # not announced before it is due
                node.arrival += rng.uniform(60.0, 600.0)
        return more

    def child(
        self, parent: list[_Node], start: float, runs: bool
    ) -> tuple[list[_Node], list[_Node], float]:
        """A child pipeline (strategy: depend) after the parent's first stage: all its
        jobs, the last stage's (what the parent's next stage waits for), its end."""
        self.pipelines += 1
        cid = self.pipelines
        before: list[_Node] = parent
        made: list[_Node] = []
        for stage in range(self.rng.randint(1, 2)):
            nodes = self.stage_jobs(cid, stage, start, before, False, False)
            for node in nodes:
                node.runs = runs
                # The service learns of a child pipeline from its first job here.
                node.announceable = stage > 0
            made += nodes
            before, start = nodes, self.ends(nodes)
        return made, before, start

    def chain(self, pid: int, t: float) -> None:
        """A stageless pipeline: each job needs the one before it."""
        made: list[_Node] = []
        before: list[_Node] = []
        start, runs = t, True
        for position in range(self.rng.randint(2, self.shape.stages + 2)):
            node = self.job(pid, position, start, before)
            node.runs = runs
            made.append(node)
            if runs and self.rng.random() < self.shape.stage_failure:
                runs = False
            before, start = [node], self.ends([node])
        self.finish(made, t)

    def finish(self, made: list[_Node], t: float) -> None:
        shape, rng = self.shape, self.rng
        if self.chance(shape.cancel):
            last = max(self.ends([n]) for n in made)
            at = rng.uniform(t, last)
            seen = at + rng.uniform(0.0, shape.poll)
            for node in made:
                if node.arrival >= at:
                    node.runs, node.arrival = False, seen
                elif node.end + self.claim > at:
                    node.duration = max(0.0, at - node.arrival - self.claim)
        if shape.managers > 1:
            for node in made:
                node.here = rng.random() < 1.0 / shape.managers
        self.nodes += made

    def trace_jobs(self) -> list[TraceJob]:
        jobs = []
        watch_all, exact = bool(self.shape.watch_all), bool(self.shape.exact)
        for node in self.nodes:
            announced, predicted = NEVER, math.nan
            came = [w.arrival for w in node.waits if w.runs and (w.here or watch_all)]
            if node.announceable and came:
                announced = min(came)
                predicted = max(w.arrival + self.claim + w.usual for w in node.waits)
                if exact:
                    predicted = node.arrival
            jobs.append(
                TraceJob(
                    node.arrival,
                    node.duration,
                    node.create,
                    node.pipeline,
                    node.stage,
                    node.runs,
                    node.usual,
                    announced,
                    predicted,
                    node.here,
                    node.project,
                )
            )
        jobs.sort(key=lambda j: j.arrival)
        return jobs


def working_week(shape: Shape, seed: int, creates: LogNormal, claim_seconds: float) -> Trace:
    """The week `shape` describes, deterministic for `seed`."""
    week = _Week(shape, seed, creates, claim_seconds)
    length = min(WEEK, shape.days * 86400.0)
    peak = shape.peak_pipelines / 3600.0
    t = 0.0
    while True:  # a Poisson process thinned by the week's shape
        t += week.rng.expovariate(peak)
        if t >= length:
            break
        if week.rng.random() > week_level(t):
            continue
        week.pipeline(t)
    jobs = week.trace_jobs()
    ran = sum(j.runs and j.here for j in jobs)
    unrun = sum(not j.runs for j in jobs)
    elsewhere = sum(j.runs and not j.here for j in jobs)
    describe = f"{week.pipelines} pipelines, {ran} jobs here"
    if unrun:
        describe += f", {unrun} announced or drawn and never run"
    if elsewhere:
        describe += f", {elsewhere} taken by other runner managers"
    return Trace(jobs, length, f"week of seed {seed}: {describe}")
