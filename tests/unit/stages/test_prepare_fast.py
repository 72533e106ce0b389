"""prepare's fast path: a pool claim answered by the service costs the job's prepare no
pydantic and no structlog; anything but a claim leaves the work to prepare itself."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from driver.payload import Job
from driver.pool.claims import ClaimServer, Reply, Request, peer_credentials
from driver.settings import load_settings
from driver.stages import claim, prepare_fast
from driver.stages.common import Stage
from driver.state import JobPhase, StateDir

ROOT = Path(__file__).resolve().parents[3]
TOOK = (
    "Took machine gmdu-p1 from the warm pool (ready 3s ago, host key pinned at its creation; 0.02s)"
)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "driver.toml"
    path.write_text(f'state_dir = "{tmp_path / "st"}"\n[machine]\ndriver = "local"\n')
    return path


def socket_path(config: Path) -> Path:
    return config.parent / "st" / "pool" / "claim.sock"


def test_a_claim_by_the_service_loads_neither_pydantic_nor_structlog(
    config: Path, tmp_path: Path
) -> None:
    asked: list[Request] = []

    def claimed(request: Request, peer_pid: int) -> Reply:
        asked.append(request)
        return Reply("claimed", lines=[TOOK])

    server = ClaimServer(socket_path(config), claimed)
    server.start()
    response = tmp_path / "response.json"
    code = (
        "import sys, driver.main\n"
        f"code = driver.main.main(['--config', {str(config)!r}, 'prepare'])\n"
        "print(code)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pydantic', 'structlog'}))\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "JOB_RESPONSE_FILE": str(response)},
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
    finally:
        server.stop()
    assert out.stdout.splitlines() == [f"[gitlab-machine-driver] {TOOK}", "0", "[]"], out.stderr
    (request,) = asked
    assert (request.config, request.response_file) == (str(config), str(response))


def test_the_fast_path_module_is_standard_library_only() -> None:
    code = (
        "import sys, driver.main, driver.stages.prepare_fast\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydantic', 'structlog')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stderr


def test_without_an_answering_service_prepare_does_the_work(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOB_RESPONSE_FILE", str(tmp_path / "response.json"))
    assert prepare_fast.claimed_by_pool(str(config)) is False  # no socket
    path = socket_path(config)
    path.parent.mkdir(parents=True)
    path.write_text("")  # a killed service's socket file: nobody listens
    assert prepare_fast.claimed_by_pool(str(config)) is False
    path.unlink()
    for reply in (Reply("miss"), Reply("not_here", "image mode")):
        server = ClaimServer(path, functools.partial(answer_with, reply))
        server.start()
        try:
            assert prepare_fast.claimed_by_pool(str(config)) is False
        finally:
            server.stop()
    assert prepare_fast.claimed_by_pool(str(tmp_path / "missing.toml")) is False
    config.write_text("state_dir = [not toml")
    assert prepare_fast.claimed_by_pool(str(config)) is False


def answer_with(reply: Reply, request: Request, peer_pid: int) -> Reply:
    return reply


def test_a_reply_that_is_no_reply_is_no_claim(capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare_fast.reply_says_claimed(b"") is False
    assert prepare_fast.reply_says_claimed(b"[1, 2]") is False
    assert prepare_fast.reply_says_claimed(json.dumps({"outcome": "claimed"}).encode()) is True
    assert capsys.readouterr().out == ""


# --- a claim the service finished after the fast path gave up waiting


def stage_for(config: Path, job_id: int) -> Stage:
    settings = load_settings(config)
    state = StateDir(settings.state_dir)
    job = Job(id=job_id, project_id=1, pipeline_id=None, name="")
    return Stage(settings, job, state, state.job(job_id), f"gmd-{job_id}")


def taken_for(stage: Stage, claimant: claim.Claimant, *, taken_boot: float | None = None) -> None:
    """A pool machine the service took for ``claimant``, as take_from_pool leaves it."""
    stage.job_dir.create()
    record = claim.new_record(stage.settings, stage.job, "gmd-p1", claimant)
    record.phase = JobPhase.READY
    if taken_boot is not None:
        record.taken_boot = taken_boot
    stage.job_dir.save(record)
    stage.job_dir.known_hosts.write_text("key\n")
    stage.job_dir.ssh_config.write_text("Host machine\n")


def test_prepare_takes_over_what_the_service_took_for_this_very_process(config: Path) -> None:
    stage = stage_for(config, 61)
    me = claim.Claimant.this_process()
    taken_for(stage, me)
    record = claim.claimed_for(stage, me)
    assert record is not None and record.machine == "gmd-p1"


def test_a_record_of_another_process_or_half_made_is_a_leftover(config: Path) -> None:
    me = claim.Claimant.this_process()
    other = stage_for(config, 62)
    taken_for(other, claim.Claimant(me.pid + 1, me.owners, me.pid_ns))
    assert claim.claimed_for(other, me) is None
    earlier = stage_for(config, 63)  # an earlier attempt whose pid this one reuses
    taken_for(earlier, me, taken_boot=1.0)
    assert claim.claimed_for(earlier, me) is None
    half = stage_for(config, 64)  # the service stopped before the hand-over
    taken_for(half, me)
    half.job_dir.ssh_config.unlink()
    assert claim.claimed_for(half, me) is None
    unreleased = stage_for(config, 65)  # its claim marker still there
    taken_for(unreleased, me)
    claimed = unreleased.state.pool_root / "claimed"
    claimed.mkdir(parents=True)
    (claimed / "gmd-p1@65").write_text("")
    assert claim.claimed_for(unreleased, me) is None


def test_the_service_gets_the_peer_credentials_from_the_kernel() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        assert peer_credentials(left) == (os.getpid(), os.getuid())
