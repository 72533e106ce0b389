"""Reclaiming without harm, on real machines of the double: a prepare stopped
mid-create leaves nothing, also when the runner is gone and its pipes closed;
a live job is never taken for a dead one; broken entries and failed removals
are handled one by one, and a force-removed machine is retried until gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from driver.contract import synthetic_response
from testing import docker_machine as double
from testing.runner import Job
from testing.world import Env, driver_argv

JOB_ID = 777


def stage_env(env: Env, job_id: int = JOB_ID) -> dict[str, str]:
    """What the runner gives an executable of job ``job_id``."""
    work = env.base / f"runner-{job_id}"
    work.mkdir(exist_ok=True)
    response = work / "response.json"
    response.write_text(json.dumps(synthetic_response(job_id, 1)))
    return {
        **env.process_env(),
        "TMPDIR": str(work),
        "JOB_RESPONSE_FILE": str(response),
        "BUILD_FAILURE_EXIT_CODE": "33",
        "SYSTEM_FAILURE_EXIT_CODE": "34",
    }


def wait_for(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def entry_written(env: Env, name: str) -> bool:
    return (env.storage / "machines" / name / "config.json").exists()


def start_prepare(env: Env, *, reader_alive: bool) -> tuple[subprocess.Popen[bytes], list[bytes]]:
    """A prepare whose stdout and stderr are a pipe, as the runner's are."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [*driver_argv(), "--config", str(env.config_path), "prepare"],
        stdout=write_end,
        stderr=write_end,
        stdin=subprocess.DEVNULL,
        env=stage_env(env),
        start_new_session=True,  # its own group, as the runner starts it
    )
    os.close(write_end)
    output: list[bytes] = []
    if reader_alive:
        import threading

        def read() -> None:
            while chunk := os.read(read_end, 65536):
                output.append(chunk)
            os.close(read_end)

        threading.Thread(target=read, daemon=True).start()
    else:
        os.close(read_end)  # the runner died: nobody reads the job log any more
    return proc, output


def cancel_during_create(env: Env, *, reader_alive: bool) -> bytes:
    env.faults(create_hang={"times": 1})
    proc, output = start_prepare(env, reader_alive=reader_alive)
    wait_for(lambda: entry_written(env, f"gmdt-{JOB_ID}"), "the create to start")
    proc.send_signal(signal.SIGTERM)  # as the runner, or systemd, cancels
    assert proc.wait(timeout=120) == 34
    return b"".join(output)


def assert_clean(env: Env) -> None:
    assert env.machines() == []
    assert env.job_dirs() == []
    assert double.storage_pids(str(env.storage)) == []
    assert "machine_removed" in (env.state_dir / "driver.log").read_text()


def test_a_prepare_cancelled_during_create_leaves_nothing(env: Env) -> None:
    said = cancel_during_create(env, reader_alive=True)
    assert_clean(env)
    assert b"its machine was removed" in said


def test_a_prepare_cancelled_after_the_runner_died_leaves_nothing(env: Env) -> None:
    """The runner's pipes are closed: every write to the job log fails. The removal
    must not depend on any of them."""
    cancel_during_create(env, reader_alive=False)
    assert_clean(env)


def test_a_prepare_under_a_short_lived_wrapper_is_not_taken_for_a_dead_runner(env: Env) -> None:
    """sudo, `sh -c`, a wrapper script: prepare's parent exits with it; the runner
    above it lives on, so its machine is kept."""
    python, *module = driver_argv()
    prepare = [python, *module, "--config", str(env.config_path), "prepare"]
    runner = env.runner(
        prepare_exec="/bin/sh", prepare_args=["-c", '"$@"; exit $?', "sh", *prepare]
    )
    held = runner.prepare_only(Job())
    assert held.ok, held.failure
    swept = env.driver("sweep")
    assert swept.returncode == 0, swept.stderr
    assert "keeping" in swept.stdout and "removing" not in swept.stdout, swept.stdout
    assert len(env.machines()) == 1
    held.cleanup()
    env.assert_nothing_left_but_runner_temp()


def test_after_the_runner_dies_the_sweeper_reclaims_its_machines(env: Env) -> None:
    """A runner started by init (as systemd starts gitlab-runner) prepares two jobs,
    then dies without cleanup: the host restarted, or the runner was killed."""
    done = env.base / "runner-done"
    runner = textwrap.dedent(
        f"""
        from pathlib import Path
        from testing.world import Env
        from testing.runner import Job
        env = Env(Path({str(env.base)!r}))
        ok = all(env.runner().prepare_only(Job()).ok for _ in range(2))
        Path({str(done)!r}).write_text("ok" if ok else "failed")
        """
    )
    # `setsid -f`: the runner is orphaned at once, its parent is init, as a service's is.
    # process_env puts the repository on its PYTHONPATH, for `testing`.
    subprocess.run(
        ["setsid", "-f", sys.executable, "-c", runner], check=True, env=env.process_env()
    )
    wait_for(done.exists, "the runner to prepare its jobs and die", timeout=180)
    assert done.read_text() == "ok"
    assert len(env.machines()) == 2
    dry = env.driver("sweep", "--dry-run")
    assert dry.stdout.count("would remove (the runner process that owned its job is gone)") == 2
    assert len(env.machines()) == 2
    swept = env.driver("sweep")
    assert swept.returncode == 0, swept.stderr
    assert "2 machine(s) owned, 2 removed" in swept.stdout
    env.assert_nothing_left_but_runner_temp()


def test_a_broken_entry_stops_neither_ls_nor_sweep_nor_cleanup(env: Env) -> None:
    jobs = [Job(), Job()]
    held = [env.runner().prepare_only(job) for job in jobs]
    assert all(p.ok for p in held)
    broken = env.storage / "machines" / f"gmdt-{jobs[0].id}" / "config.json"
    broken.write_text('{"ConfigVersion": 3, "Driver": {')  # truncated
    listed = env.driver("ls")
    assert listed.returncode == 0, listed.stderr
    assert f"gmdt-{jobs[1].id}" in listed.stdout
    swept = env.driver("sweep")
    assert swept.returncode == 0, swept.stderr
    assert len(env.machines()) == 2  # both jobs' runners live: both kept
    for prepared in held:
        prepared.cleanup()
    assert env.machines() == []
    env.driver("sweep")  # the broken one was force-removed: its tombstone is retried
    env.assert_nothing_left_but_runner_temp()


def test_a_machine_that_could_only_be_force_removed_is_retried_until_gone(env: Env) -> None:
    env.faults(rm_fail={"times": -1})
    result = env.run_job(Job())
    assert result.outcome == "success", result.describe()
    assert env.machines() == []  # the entry was force-removed...
    listed = env.driver("ls")
    assert "tombstone" in listed.stdout  # ...but the VM may still run: it is remembered
    swept = env.driver("sweep")
    assert "still cannot be removed" in swept.stdout
    assert "1 tombstone(s)" in swept.stdout
    env.faults(rm_fail=None)
    swept = env.driver("sweep")
    assert "removed at last" in swept.stdout, swept.stdout
    assert "tombstone" not in env.driver("ls").stdout
    env.assert_nothing_left()


def test_a_retried_prepare_pins_the_new_machine_afresh(env: Env) -> None:
    """The runner retries prepare for the same job: the machine is made anew under the
    same name, with new host keys; the old pin must not refuse it."""
    held = env.runner().prepare_only(Job())
    assert held.ok, held.failure
    again = subprocess.run(
        [*driver_argv(), "--config", str(env.config_path), "prepare"],
        env=held.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert again.returncode == 0, again.stderr
    assert "left over from an earlier attempt" in again.stdout
    assert "host key pinned" in again.stdout
    held.cleanup()
    env.assert_nothing_left_but_runner_temp()


def test_a_machine_whose_driver_plugin_is_gone_is_still_seen_and_reclaimed(env: Env) -> None:
    """`ls --filter` leaves such a machine out and `rm -y` fails on it; the sweeper reads
    the storage itself, force-removes it once proven dead, and keeps a tombstone
    (the VM may still run where the plugin could have deleted it)."""
    held = env.runner().prepare_only(Job())
    assert held.ok
    name = env.machines()[0]
    double.make_driver_missing(str(env.storage), name)
    (env.state_dir / "jobs").rename(env.base / "jobs-elsewhere")  # no record names it now
    swept = env.driver("sweep")
    assert swept.returncode == 0, swept.stderr
    assert f"{name}: removing (no record on this host names it)" in swept.stdout
    assert not (env.storage / "machines" / name).exists()
    assert "tombstone" in env.driver("ls").stdout
    # The admin deletes it in the cloud (the double's is gone already), then says so.
    forgot = env.driver("sweep", "--forget", name)
    assert forgot.returncode == 0, forgot.stderr
    assert "tombstone" not in env.driver("ls").stdout
    env.assert_nothing_left_but_runner_temp()


def test_a_job_of_another_gitlab_with_the_same_id_touches_nothing(env: Env) -> None:
    """Two [[runners]] of two GitLab instances share one driver config: job 4242 of
    gitlab-b must not remove job 4242 of gitlab-a's live machine as "left over", and
    its cleanup must not remove it either. The second instance is refused, saying how
    to separate them."""
    mine = Job(id=4242, server_url="https://gitlab-a.example.com")
    held = env.runner().prepare_only(mine)
    assert held.ok, held.failure
    theirs = env.run_job(Job(id=4242, server_url="https://gitlab-b.example.com"))
    assert theirs.outcome == "system_failure", theirs.describe()
    assert "this job is of https://gitlab-b.example.com" in theirs.job_log
    assert "a driver config of its own" in theirs.job_log
    assert env.machines() == ["gmdt-4242"]  # gitlab-a's job keeps its machine
    assert env.job_dirs() == ["4242"]
    again = env.run_job(Job(server_url="https://GITLAB-A.example.com/"))  # one spelling
    assert again.outcome == "success", again.describe()
    held.cleanup()
    env.assert_nothing_left()
