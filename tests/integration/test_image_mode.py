"""Image mode: whole jobs in their own image with services, on each VM's own engine.

Images are made from the host's Debian files (testing/images.py) and served by
registries on a test host of the double, one of them requiring a login.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testing import images
from testing.runner import CancelPlan, Job, Service, Variable
from testing.world import Env, driver_argv, stop_pool, wait_for

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not images.available(),
    reason="needs root, docker.io, docker-registry and busybox-static",
)
USER, PASSWORD = "gitlab-ci-token", "glcbt-64_registry-test-token"
HOSTILE = 'it\'s $(echo no) `echo no` \\ "q" ümlaut\ttab\nline2 $HOME *'


@pytest.fixture(scope="module")
def registry() -> Iterator[images.Registry]:
    with images.serving(USER, PASSWORD, images.test_images()) as reg:
        reg.push_private("ci/busybox:1", USER, PASSWORD)
        yield reg


def image_world(env: Env, registry: images.Registry, **image: Any) -> None:
    images.forwarding(True)  # again: a session that started before ours may have ended
    allowed = ["always", "if-not-present", "never"]
    env.configure(**images.image_mode(registry, allowed_pull_policies=allowed, **image))


def test_a_job_runs_in_its_image_and_the_plumbing_in_the_helper(
    env: Env, registry: images.Registry
) -> None:
    image_world(env, registry)
    job = Job(
        image=f"{registry.open}/ci/bash:1",
        script=[
            "test -f /.dockerenv && echo in-a-container",
            'echo "shell=$BASH_VERSION pwd=$(pwd)"',
            "cat .emulated-checkout",  # written by get_sources, in the helper
            "git --version",
            "gitlab-runner --version || echo no-runner-in-build-image",
        ],
        after_script=["echo after-in-$(hostname)"],
        artifacts=True,
    )
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    build = result.lines("build_script")
    assert "in-a-container" in build
    assert any(line.startswith("shell=5.") for line in build)  # detect found bash first
    assert any(line.endswith(f" pwd=/builds/{job.project_path}") for line in build)
    assert job.commit_sha in build
    assert "no-runner-in-build-image" in build
    assert f"after-in-gmdt-{job.id}" in result.lines()
    # The runner's own stages ran in the helper, where gitlab-runner(-helper) is.
    assert "helper stand-in: artifacts-uploader" in result.job_log
    assert "Missing gitlab-runner" not in result.job_log
    assert f"Running on gmdt-{job.id}" in result.job_log
    env.assert_nothing_left()


def test_an_image_with_only_busybox_sh_gets_variables_intact(
    env: Env, registry: images.Registry
) -> None:
    image_world(env, registry)
    job = Job(
        image=f"{registry.open}/ci/busybox:1",
        variables=[Variable("HOSTILE", HOSTILE)],
        script=[
            "readlink /proc/$$/exe",
            "test -e /bin/bash || echo no-bash-here",
            'printf "<%s>\\n" "$HOSTILE"',
        ],
    )
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    build = result.lines("build_script")
    assert "/bin/busybox" in build
    assert "no-bash-here" in build
    assert "\n".join(build).count(f"<{HOSTILE}>") == 1  # the value, not the echoed command
    env.assert_nothing_left()


def test_exit_codes_and_stdin_in_a_container(env: Env, registry: images.Registry) -> None:
    image_world(env, registry)
    job = Job(
        image=f"{registry.open}/ci/busybox:1",
        script=["cat", "read line || echo stdin-is-empty", "exit 42"],
        after_script=["echo after-ran"],
    )
    result = env.run_job(job)
    assert (result.outcome, result.exit_code) == ("failed", 42), result.describe()
    assert "stdin-is-empty" in result.lines()
    assert "after-ran" in result.lines()
    result = env.run_job(Job(image=f"{registry.open}/ci/bash:1", script=["exit 255"]))
    assert (result.outcome, result.exit_code) == ("failed", 255), result.describe()
    env.assert_nothing_left()


def test_services_are_reached_by_their_aliases(env: Env, registry: images.Registry) -> None:
    image_world(env, registry, wait_for_services_timeout=5)
    web = f"{registry.open}/ci/web:1"
    job = Job(
        image=f"{registry.open}/ci/busybox:1",
        variables=[Variable("CI_DEBUG_SERVICES", "true")],
        services=[
            Service(
                web,
                alias="web, www",
                command=["sh", "-c", "echo svc-says $GREETING; exec httpd -f -p 8080 -h /www"],
                variables=[Variable("GREETING", "hello-$CI_JOB_NAME")],
            ),
            # Exposes nothing; told to be checked on a port nobody listens on.
            Service(
                f"{registry.open}/ci/busybox:1",
                alias="ticker",
                command=["sh", "-c", "i=0; while sleep 0.2; do i=$((i+1)); echo tick-$i; done"],
                variables=[Variable("HEALTHCHECK_TCP_PORT", "9999")],
            ),
        ],
        script=[
            "wget -qO- http://web:8080/",
            "wget -qO- http://www:8080/",
            f"wget -qO- http://{registry.host}-ci-web:8080/",
            "sleep 2",
        ],
    )
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    assert result.stage("build_script").stdout.count("hello from the web service") == 3
    assert "Waiting for services to be up and running (timeout 5 seconds)" in result.job_log
    # CI_DEBUG_SERVICES: their output followed while the stages run, labelled with their
    # aliases as the docker executor does, each line once.
    web = f"[service:{registry.host}__ci__web-{registry.host}-ci-web-web-www] "
    assert f"{web}svc-says hello-test-job" in result.job_log
    build = result.stage("build_script")
    assert "-ticker] tick-" in build.stdout + build.stderr
    ticks = [
        int(line.rsplit("tick-", 1)[1])
        for line in result.job_log.splitlines()
        if line.startswith("[service:") and "-ticker] tick-" in line
    ]
    assert ticks == list(range(1, len(ticks) + 1)) and len(ticks) >= 10
    # The silent one is only a warning, naming it.
    assert "probably didn't start properly" in result.job_log
    assert f"gmdt-{job.id}-svc-1" in result.job_log
    env.assert_nothing_left()


def test_a_service_that_dies_at_once_is_warned_about_with_its_logs(
    env: Env, registry: images.Registry
) -> None:
    image_world(env, registry, wait_for_services_timeout=5)
    job = Job(
        image=f"{registry.open}/ci/busybox:1",
        services=[
            Service(f"{registry.open}/ci/crashing:1", alias="postgres"),
            # Exposes nothing and keeps running: nothing to say about it.
            Service(f"{registry.open}/ci/busybox:1", alias="quiet", command=["sleep", "300"]),
        ],
        script=["echo the-job-ran"],
    )
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    assert "the-job-ran" in result.lines("build_script")
    # The VM has no gitlab-runner, which a job in its image does not need: no word of it.
    assert "no gitlab-runner binary" not in result.job_log
    lines = result.lines()
    crashed = f"gmdt-{job.id}-svc-0"
    assert f"*** WARNING: Service {crashed} probably didn't start properly." in lines
    assert f"service {crashed} exited with code 1" in lines
    assert images.CRASH_MESSAGE in lines  # its own log, not an echoed command
    assert "*********" in lines
    assert f"gmdt-{job.id}-svc-1 probably" not in result.job_log
    prepare = result.execs("prepare")[-1]
    assert images.CRASH_MESSAGE in prepare.stderr.splitlines()  # on stderr, as docker's
    env.assert_nothing_left()


def test_a_private_registry_is_pulled_from_with_the_job_token(
    env: Env, registry: images.Registry
) -> None:
    image_world(env, registry)
    image = f"{registry.private}/ci/busybox:1"
    job = Job(image=image, token=PASSWORD, registry=registry.private, script=["echo pulled"])
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    assert "Authenticating with credentials from job payload" in result.job_log
    prepare = result.execs("prepare")[-1]
    assert PASSWORD not in prepare.stdout + prepare.stderr  # raw output, before masking
    assert PASSWORD not in (env.state_dir / "driver.log").read_text()

    wrong = Job(image=image, registry=registry.private, script=["echo never"])
    result = env.run_job(wrong)
    assert result.outcome == "failed", result.describe()
    assert result.prepare_attempts == 1  # the job's to fix: not retried
    assert f"pulling image {image} failed" in result.job_log
    env.assert_nothing_left()


def test_a_rate_limited_pull_is_retried_within_the_job(env: Env, registry: images.Registry) -> None:
    image_world(env, registry)
    limited = registry.rate_limited(5002, refusals=2)
    image = f"{limited}/ci/busybox:1"
    result = env.run_job(Job(image=image, script=["echo pulled-after-the-limit"]))
    assert result.outcome == "success", result.describe()
    assert "pulled-after-the-limit" in result.lines("build_script")
    assert f"Retrying pull of {image} in " in result.job_log
    assert "(attempt 2/3): toomanyrequests" in result.job_log
    assert result.prepare_attempts == 1
    env.assert_nothing_left()


def test_a_pull_that_stays_rate_limited_fails_the_job_on_one_machine(
    env: Env, registry: images.Registry
) -> None:
    image_world(env, registry)
    image = f"{registry.rate_limited(5003, refusals=1000)}/ci/busybox:1"
    result = env.run_job(Job(image=image, script=["echo never"]))
    assert result.outcome == "failed", result.describe()
    assert "never" not in result.lines()
    assert result.prepare_attempts == 1  # a job failure: no new VM to hit the limit again
    assert result.job_log.count("Created machine ") == 1
    assert f"pulling image {image} failed: toomanyrequests" in result.job_log
    assert "pull rate limit" in result.job_log
    assert "(attempt 3/3)" in result.job_log
    env.assert_nothing_left()


def test_the_default_helper_is_loaded_from_the_prebuilt_tarball(
    env: Env, registry: images.Registry, tmp_path: Path
) -> None:
    """helper_image unset: GitLab's helper for the runner's version, which no registry
    here serves, is imported from the runner host's prebuilt tarball."""
    arch = {"aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    tarball = tmp_path / f"prebuilt-alpine-{arch}.tar.xz"
    images.prebuilt_helper(tarball)
    image_world(env, registry, helper_image="", helper_images_dir=str(tmp_path))
    job = Job(image=f"{registry.open}/ci/busybox:1", script=["echo in-busybox"], artifacts=True)
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    assert "in-busybox" in result.lines("build_script")
    helper = "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper"
    assert f"Loaded helper image {helper}:{arch}-v" in result.job_log
    assert f"from {tarball}" in result.job_log
    assert f"Pulling docker image {helper}" not in result.job_log
    # The runner's stages ran in it (its stand-in gitlab-runner-helper answered).
    uploads = [x for x in result.lines() if x.startswith("helper stand-in: artifacts-uploader in ")]
    assert uploads, result.job_log
    env.assert_nothing_left()


def test_pull_policy_never_on_a_missing_image_fails_clearly(
    env: Env, registry: images.Registry
) -> None:
    image_world(env, registry)
    job = Job(image=f"{registry.open}/ci/busybox:1", image_pull_policy=["never"])
    result = env.run_job(job)
    assert result.outcome == "failed", result.describe()
    assert 'is not on the machine and its pull policy is "never"' in result.job_log
    assert result.prepare_attempts == 1
    env.assert_nothing_left()


def test_a_refused_image_fails_before_any_machine_naming_the_setting(
    env: Env, registry: images.Registry
) -> None:
    image_world(env, registry, allowed_images=[f"{registry.open}/ci/bash:*"])
    job = Job(image=f"{registry.open}/ci/busybox:1")
    result = env.run_job(job)
    assert result.outcome == "failed", result.describe()
    assert "allowed_images" in result.job_log
    assert f'"{registry.open}/ci/busybox:1" image is not present' in result.job_log
    assert "Creating machine" not in result.job_log
    assert result.prepare_attempts == 1
    env.assert_nothing_left()


def test_the_job_builds_images_on_the_vms_engine(env: Env, registry: images.Registry) -> None:
    image_world(env, registry)
    job = Job(
        image=f"{registry.open}/ci/bash:1",
        script=[
            "echo made-in-the-job > f",
            "printf 'FROM scratch\\nCOPY f /f\\n' > Dockerfile",
            "DOCKER_BUILDKIT=0 docker build -q -t built-in-job:1 . >/dev/null",
            "docker image ls built-in-job --format 'built {{.Repository}}:{{.Tag}}'",
        ],
    )
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    assert "built built-in-job:1" in result.lines()
    env.assert_nothing_left()


ENTRYPOINT_FORMS = [
    # (image, the job's entrypoint:, [image] settings, what FROM_ENTRYPOINT says)
    pytest.param("ci/entry:1", None, {}, "exec-args", id="image-entrypoint-execs-its-args"),
    pytest.param("ci/entry:1", [""], {}, "none", id="no-entrypoint"),
    pytest.param("ci/busybox:1", ["/bin/sh", "-c"], {}, "none", id="sh-c"),
    pytest.param("ci/bash:1", ["/bin/bash", "-lc"], {}, "none", id="bash-lc"),
    pytest.param("ci/stdin-entry:1", None, {}, "stdin-shell", id="ignores-args-reads-stdin"),
    pytest.param(
        "ci/entry:1",
        ["/bin/sh", "-c"],
        {"disable_entrypoint_overwrite": True},
        "exec-args",
        id="override-disabled",
    ),
]


@pytest.mark.parametrize(("image", "entrypoint", "settings", "expected"), ENTRYPOINT_FORMS)
def test_every_entrypoint_the_docker_executor_accepts(
    env: Env,
    registry: images.Registry,
    image: str,
    entrypoint: list[str] | None,
    settings: dict[str, Any],
    expected: str,
) -> None:
    """The keeper reaches the container as a stage's script reaches docker's: on stdin,
    after the ENTRYPOINT got `sh -c <detect shell>`; each stage sees what it set up."""
    image_world(env, registry, **settings)
    job = Job(
        image=f"{registry.open}/{image}",
        image_entrypoint=entrypoint,
        script=['echo "entry=${FROM_ENTRYPOINT:-none}"', "echo second-line"],
        after_script=['echo "after=${FROM_ENTRYPOINT:-none}"'],
    )
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    build = result.lines("build_script")
    assert f"entry={expected}" in build
    assert "second-line" in build
    assert f"after={expected}" in result.lines("after_script")
    if settings:
        assert "[gitlab-machine-driver] Entrypoint override disabled" in result.lines()
    env.assert_nothing_left()


LOOP = "while true; do date +%s%N >> /tmp/alive; sleep 0.1; done"
CHECK_STOPPED = (
    "a=$(wc -l < /tmp/alive); sleep 1.5; b=$(wc -l < /tmp/alive); "
    'if [ "$a" = "$b" ]; then echo BUILD-STOPPED; else echo BUILD-STILL-RUNNING; fi'
)


def test_cancel_stops_the_build_in_the_container(env: Env, registry: images.Registry) -> None:
    image_world(env, registry)
    job = Job(
        image=f"{registry.open}/ci/busybox:1",
        script=["trap '' TERM", LOOP],
        after_script=[CHECK_STOPPED],
    )
    result = env.run_job(job, cancel=CancelPlan("build_script", after=3.0))
    assert result.outcome == "cancelled", result.describe()
    assert "BUILD-STOPPED" in result.lines(), result.describe()
    env.assert_nothing_left()


def test_a_sigkilled_run_still_stops_the_build_in_the_container(
    env: Env, registry: images.Registry
) -> None:
    image_world(env, registry)
    job = Job(image=f"{registry.open}/ci/busybox:1")
    prepared = env.runner().prepare_only(job)
    assert prepared.ok, prepared.job_log
    script = env.base / "loop.sh"
    script.write_text(f"{LOOP}\n")
    run = subprocess.Popen(
        [*driver_argv(), "--config", str(env.config_path), "run", str(script), "build_script"],
        env=prepared.env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(3)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    check = Path(env.base / "check.sh")
    check.write_text(CHECK_STOPPED + "\n")
    probe = subprocess.run(
        [*driver_argv(), "--config", str(env.config_path), "run", str(check), "after_script"],
        env=prepared.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "BUILD-STOPPED" in probe.stdout, probe.stdout + probe.stderr
    prepared.cleanup()
    env.assert_nothing_left()


def test_the_pool_learns_the_images_recent_jobs_ran(env: Env, registry: images.Registry) -> None:
    image_world(env, registry, pool_recent_images=2)
    env.configure(pool={"idle_count": 1, "check_interval": 0.5, "drain_on_stop": True})
    bash = f"{registry.open}/ci/bash:1"  # in no [pool] images: the first job pulls it
    service = env.start_pool(quiet=True)

    def pool_hit(job: Job) -> str:
        env.wait_ready(service=service)
        result = env.run_job(job)
        assert result.outcome == "success", result.describe()
        assert "from the warm pool" in result.job_log
        return result.job_log

    try:
        first = pool_hit(Job(image=bash, script=["echo first"]))
        assert f"Pulling docker image {bash} ..." in first
        # The machine readied while the first job ran may predate what it learned.
        second = pool_hit(Job(image=bash, script=["echo second"]))
        third = pool_hit(Job(image=bash, script=["echo third"]))
        assert f"Using locally found image {bash}" in second + third
        assert f"Pulling docker image {bash} ..." not in third
        # The pool started the helper container too ([image] helper_image is set), and
        # the runner's stages run in it.
        fourth = pool_hit(Job(image=bash, script=["cat .emulated-checkout"], artifacts=True))
        assert "Using the helper container the warm pool started" in third + fourth
        assert "helper stand-in: artifacts-uploader" in fourth
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=180)
    env.assert_nothing_left()


def test_a_stopped_machine_back_at_a_new_address_runs_the_job_in_its_image(
    env: Env, registry: images.Registry
) -> None:
    """Image mode speaks to the VM's engine over TLS; a stopped machine that comes back at
    a new address has a certificate for the old one: made again, the job's containers
    run there (docker-machine's own words after a start: "Started machines may have new
    IP addresses"; testing/docker_machine/power.py)."""
    image_world(env, registry)
    env.configure(
        docker={"check": False},  # image mode alone must ask for the new certificates
        pool={"idle_count": 0, "stopped_count": 1, "check_interval": 0.5, "drain_on_stop": True},
    )
    service = env.start_pool(quiet=True)
    try:
        wait_for(lambda: env.stopped_machines() != [], timeout=180)
        [name] = env.stopped_machines()
        env.faults(start_new_address={"times": 1})
        job = Job(
            image=f"{registry.open}/ci/bash:1",
            script=["test -f /.dockerenv && echo in-a-container"],
        )
        result = env.run_job(job)
        assert result.outcome == "success", result.describe()
        lines = result.lines()
        prefix = "[gitlab-machine-driver] "
        assert (
            f"{prefix}Regenerating the engine certificates of {name} for its new address..."
            in lines
        )
        assert any(
            line.startswith(f"{prefix}Machine {name} came back at a new address: ")
            for line in lines
        )
        started = f"{prefix}Started machine {name} from the warm pool's stopped tier ("
        assert any(line.startswith(started) for line in lines)
        assert any(line.startswith(f"Running on {name} via ") for line in lines)  # no retry
        assert "in-a-container" in result.lines("build_script")
    finally:
        stop_pool(service)
    env.assert_nothing_left()


def test_a_non_root_user_runs_the_stages_and_writes_the_clone(
    env: Env, registry: images.Registry
) -> None:
    image_world(env, registry)
    job = Job(
        image=f"{registry.open}/ci/busybox:1",
        image_docker={"user": "1000"},
        script=["id -u", "echo made-by-the-build > built.txt", "cat built.txt"],
    )
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    build = result.lines("build_script")
    assert "1000" in build  # the stage ran as the job's user, through the keeper
    assert "made-by-the-build" in build  # the helper's umask 0000 left the clone writable
    env.assert_nothing_left()


def test_the_runners_docker_options_reach_the_containers(
    env: Env, registry: images.Registry
) -> None:
    """[runners.docker] keys migrants bring, each seen from inside the build container
    (and shm_size, dns and extra_hosts from a service, which gets them too)."""
    image_world(
        env,
        registry,
        shm_size=128 * 1024 * 1024,
        dns=["10.213.0.53"],
        dns_search=["ci.example"],
        extra_hosts=["artifacts.ci.example:10.213.0.99"],
        tmpfs={"/scratch": "rw,size=16m"},
        services_tmpfs={"/svc-scratch": "rw,size=8m"},
        memory="256m",
        cpus="1.5",
        ulimit={"nofile": "1234:2345"},
        sysctls={"net.ipv4.ip_unprivileged_port_start": "80"},
        devices=["/dev/null:/dev/ci-null"],
        network_mtu=1400,
    )
    job = Job(
        image=f"{registry.open}/ci/busybox:1",
        services=[Service(f"{registry.open}/ci/web:1", alias="web")],
        script=[
            "echo shm=$(df -k /dev/shm | awk 'NR==2 {print $2}')",
            "grep -E '^(nameserver|search)' /etc/resolv.conf",
            "grep -c artifacts.ci.example /etc/hosts | sed 's/^/hosts=/'",
            "mount | grep -q ' /scratch type tmpfs' && echo tmpfs=yes",
            # cgroup v2, else v1 (this project's own test hosts have v1)
            "cd /sys/fs/cgroup",
            "echo memory=$(cat memory.max 2>/dev/null || cat memory/memory.limit_in_bytes)",
            "echo cpu=$(cat cpu.max 2>/dev/null || cat cpu/cpu.cfs_quota_us cpu/cpu.cfs_period_us)",
            "echo nofile=$(ulimit -n)",
            "echo port_start=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start)",
            "test -c /dev/ci-null && echo device=yes",
            "echo mtu=$(cat /sys/class/net/eth0/mtu)",
        ],
    )
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    build = result.lines("build_script")
    expected = [
        f"shm={128 * 1024}",
        # On the per-job network Docker's embedded DNS (127.0.0.11) forwards to `dns`;
        # only the search list shows in resolv.conf.
        "search ci.example",
        "hosts=1",
        "tmpfs=yes",
        f"memory={256 * 1024 * 1024}",
        "cpu=150000 100000",
        "nofile=1234",
        "port_start=80",
        "device=yes",
        "mtu=1400",
    ]
    missing = [line for line in expected if line not in build]
    assert not missing, "\n".join(build)
    env.assert_nothing_left()


def test_a_path_volume_is_one_volume_shared_by_services_and_the_build(
    env: Env, registry: images.Registry
) -> None:
    """[image] volumes "/shared": ONE named volume of the job in every container, as on the
    docker executor: what a service writes there at its start, the build reads."""
    image_world(env, registry, volumes=["/shared"], wait_for_services_timeout=10)
    write = "echo written-by-the-$SERVICE_NAME-service > /shared/from-service"
    job = Job(
        image=f"{registry.open}/ci/busybox:1",
        services=[
            Service(
                f"{registry.open}/ci/web:1",
                alias="web",
                command=["sh", "-c", f"{write}; exec httpd -f -p 8080 -h /www"],
                variables=[Variable("SERVICE_NAME", "web")],
            )
        ],
        script=["cat /shared/from-service"],
    )
    result = env.run_job(job)
    assert result.outcome == "success", result.describe()
    assert "written-by-the-web-service" in result.lines("build_script")
    env.assert_nothing_left()
