"""Build what can be built here, the Debian package, and check it as a runner host gets it.

The package is built once per session (about a minute: pip installs the driver
into a venv on Debian's interpreter). The check in a clean Debian root takes
minutes more (debootstrap, apt), so it runs only with GMD_TEST_DEBIAN_ROOT=1.

The container image needs a registry to pull its base from, which this
machine cannot reach; its recipe is checked for what it must contain (and in
test_container.py, instruction by instruction).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "packaging" / "deb" / "build"
SYSTEM_PYTHON = Path("/usr/bin/python3")
IN_CI = os.environ.get("CI") == "true"
UNITS = ("gitlab-machine-driver-pool@.service", "gitlab-machine-driver-sweep@.service")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Where the clean root's debootstrap is kept between runs (it is the slow part).
DEBIAN_ROOT_CACHE = Path(
    os.environ.get("GMD_DEBIAN_ROOT_CACHE", "/var/cache/gitlab-machine-driver-tests")
)


def needs(condition: bool, reason: str) -> None:
    """Skip where this host cannot do it, but never under CI, which must run everything."""
    if not condition:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: scripts/setup must provide it)")
        pytest.skip(reason)


def run(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def system_python_version() -> str:
    out = run(str(SYSTEM_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    return out.stdout.strip()


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs(shutil.which("dpkg-deb") is not None, "needs dpkg-deb (Debian)")
    needs(SYSTEM_PYTHON.exists(), "needs Debian's /usr/bin/python3")
    out = tmp_path_factory.mktemp("deb")
    built = run(str(BUILD), str(out), env={**os.environ, "PYTHON": str(SYSTEM_PYTHON)}, timeout=900)
    assert built.returncode == 0, built.stderr
    path = Path(built.stdout.strip().splitlines()[-1])
    assert path.name.startswith("gitlab-machine-driver_") and path.suffix == ".deb"
    return path


@pytest.fixture(scope="module")
def unpacked(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def test_the_build_refuses_an_interpreter_that_is_not_the_systems(tmp_path: Path) -> None:
    """This test's own interpreter is a venv (or pyenv): a package made with it would link
    to it and work only on the host that built it."""
    assert sys.prefix != "/usr" or sys.base_prefix != "/usr"
    refused = run(str(BUILD), str(tmp_path), env={**os.environ, "PYTHON": sys.executable})
    assert refused.returncode != 0
    assert "build with PYTHON=/usr/bin/python3" in refused.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_package_holds_command_config_and_units(deb: Path) -> None:
    listing = run("dpkg-deb", "-c", str(deb)).stdout
    # "-rw-r----- root/root 7342 2026-12-01 11:08 ./etc/...": the path (and link) last.
    entries = {line.split(maxsplit=5)[5]: line for line in listing.splitlines()}
    config = entries["./etc/gitlab-machine-driver/config.toml"]
    # 0640 root:root: once migrate or the admin fills it, it holds credentials.
    assert config.split()[:2] == ["-rw-r-----", "root/root"]
    assert (
        "./usr/bin/gitlab-machine-driver -> /opt/gitlab-machine-driver/bin/gitlab-machine-driver"
        in entries
    )
    for unit in (*UNITS, "gitlab-machine-driver-sweep@.timer"):
        assert f"./lib/systemd/system/{unit}" in entries
    # Image mode's shell programs are package data, read when the driver imports them.
    shipped = {Path(e).name for e in entries if "/site-packages/driver/image/sh/" in e}
    assert {p.name for p in (ROOT / "driver" / "image" / "sh").glob("*.sh")} <= shipped
    conffiles = run("dpkg-deb", "-I", str(deb), "conffiles").stdout.split()
    assert "/etc/gitlab-machine-driver/config.toml" in conffiles
    depends = run("dpkg-deb", "-f", str(deb), "Depends").stdout
    assert f"python{system_python_version()}" in depends and "openssh-client" in depends


def test_the_venv_is_made_of_debians_interpreter_and_nothing_of_the_build_host(
    unpacked: Path,
) -> None:
    venv = unpacked / "opt" / "gitlab-machine-driver"
    version = system_python_version()
    cfg = dict(
        line.split(" = ", 1)
        for line in (venv / "pyvenv.cfg").read_text().splitlines()
        if " = " in line
    )
    assert cfg["home"] == "/usr/bin"
    assert os.readlink(venv / "bin" / f"python{version}") == f"/usr/bin/python{version}"
    assert os.path.realpath(venv / "bin" / "python3") == f"/usr/bin/python{version}"
    assert (venv / "lib" / f"python{version}" / "site-packages" / "driver").is_dir()
    assert (
        (venv / "bin" / "gitlab-machine-driver")
        .read_text()
        .startswith("#!/opt/gitlab-machine-driver/bin/python")
    )
    leaks = run(
        "grep",
        "-rlI",
        "-e",
        "/root/",
        "-e",
        "/tmp/",
        "-e",
        str(ROOT),
        str(venv / "bin"),
        str(venv / "pyvenv.cfg"),
    )
    assert leaks.stdout == ""
    # The installed example loads as a config, with the venv's own interpreter.
    check = run(
        str(venv / "bin" / "python"),
        "-c",
        "import sys; from driver import settings; settings.load_settings(sys.argv[1])",
        str(unpacked / "etc/gitlab-machine-driver/config.toml"),
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert check.returncode == 0, check.stderr


def test_the_units_run_as_the_runners_user_and_pass_systemd_analyze_verify(
    unpacked: Path, tmp_path: Path
) -> None:
    for unit in UNITS:
        text = (unpacked / "lib/systemd/system" / unit).read_text()
        # GitLab's own package runs gitlab-runner as root, so its stages write root's state.
        assert re.search(r"(?m)^User=root$", text), unit
        assert "--config /etc/gitlab-machine-driver/%i.toml" in text
    analyze = shutil.which("systemd-analyze")
    needs(analyze is not None, "needs systemd-analyze (apt install systemd)")
    units_dir = Path("/usr/lib/systemd/system")
    needs(units_dir.is_dir(), "needs the host's systemd units (targets the units refer to)")
    # The package's files with the host's units, in a root of their own with a merged
    # /usr as Debian's: verify checks every ExecStart program exists there, and every unit.
    root = tmp_path / "root"
    shutil.copytree(unpacked, root, symlinks=True)
    shutil.copytree(units_dir, root / "usr/lib/systemd/system", symlinks=True, dirs_exist_ok=True)
    for unit_file in (root / "lib/systemd/system").iterdir():
        shutil.copy(unit_file, root / "usr/lib/systemd/system" / unit_file.name)
    shutil.rmtree(root / "lib")
    (root / "lib").symlink_to("usr/lib")
    instances = [
        "gitlab-machine-driver-sweep@config.timer",
        "gitlab-machine-driver-sweep@config.service",
        "gitlab-machine-driver-pool@config.service",
    ]
    verify = run(str(analyze), "verify", "--man=no", f"--root={root}", *instances)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")
    # The check is real: a broken unit is reported.
    broken = root / "usr/lib/systemd/system/gitlab-machine-driver-pool@.service"
    broken.write_text(broken.read_text().replace("Type=simple", "Type=simplest"))
    verify = run(str(analyze), "verify", "--man=no", f"--root={root}", instances[2])
    assert "Failed to parse service type" in verify.stderr


MAINTAINER_SCRIPTS = ("postinst", "prerm", "postrm")
SHIPPED_UNITS = sorted(p.name for p in (ROOT / "packaging" / "systemd").glob("*@.*"))


@pytest.fixture(scope="module")
def control(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's control area: control, conffiles and the maintainer scripts."""
    where = tmp_path_factory.mktemp("control")
    subprocess.run(["dpkg-deb", "-e", str(deb), str(where / "DEBIAN")], check=True)
    return where / "DEBIAN"


def maintainer_script(control: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one as dpkg does for a package installed into ``root`` (DPKG_ROOT): every path
    it touches, deb-systemd-helper's state and systemctl's links included, is under it."""
    env = {
        "PATH": os.environ["PATH"],
        "DPKG_ROOT": str(root),
        "DPKG_MAINTSCRIPT_PACKAGE": "gitlab-machine-driver",
        "DPKG_MAINTSCRIPT_NAME": args[0],
    }
    return run("sh", str(control / args[0]), *args[1:], env=env, timeout=60)


def test_the_maintainer_scripts_are_shipped_and_shellcheck_clean(control: Path) -> None:
    for script in MAINTAINER_SCRIPTS:
        path = control / script
        assert path.is_file() and os.access(path, os.X_OK), script
        assert path.read_text().startswith("#!/bin/sh\n"), script
    # The units they enable, purge and reload are the ones the package ships.
    for script in ("postinst", "postrm"):
        units = re.search(r'(?m)^UNITS="([^"]*)"$', (control / script).read_text())
        assert units is not None and sorted(units.group(1).split()) == SHIPPED_UNITS
    depends = (control / "control").read_text()
    assert "init-system-helpers" in depends  # deb-systemd-helper, deb-systemd-invoke
    shellcheck = shutil.which("shellcheck")
    needs(shellcheck is not None, "needs shellcheck (apt install shellcheck)")
    checked = run(str(shellcheck), *(str(control / s) for s in MAINTAINER_SCRIPTS))
    assert checked.returncode == 0, checked.stdout


def installed_root(unpacked: Path, tmp_path: Path) -> Path:
    """The package's unit files and an empty state dir in a root of their own."""
    root = tmp_path / "root"
    shutil.copytree(unpacked / "lib", root / "lib", symlinks=True)
    return root


def test_postinst_enables_no_template_and_purge_forgets_them(
    control: Path, unpacked: Path, tmp_path: Path
) -> None:
    root = installed_root(unpacked, tmp_path)
    done = maintainer_script(control, root, "postinst", "configure")
    assert done.returncode == 0, done.stderr
    assert oct((root / "var/lib/gitlab-machine-driver").stat().st_mode & 0o777) == "0o700"
    assert not (root / "etc/systemd/system").exists()  # nothing enabled
    helper_state = root / "var/lib/systemd/deb-systemd-helper-enabled"
    assert {p.name for p in helper_state.glob("*.dsh-also")} == {
        f"{unit}.dsh-also" for unit in SHIPPED_UNITS
    }
    done = maintainer_script(control, root, "postrm", "purge")
    assert done.returncode == 0, done.stderr
    assert list(helper_state.glob("*.dsh-also")) == []
    assert not (root / "var/lib/gitlab-machine-driver").exists()


def test_prerm_remove_disables_every_instance_an_admin_enabled(
    control: Path, unpacked: Path, tmp_path: Path
) -> None:
    needs(shutil.which("systemctl") is not None, "needs systemctl (apt install systemd)")
    root = installed_root(unpacked, tmp_path)
    timers = root / "etc/systemd/system/timers.target.wants"
    services = root / "etc/systemd/system/multi-user.target.wants"
    timers.mkdir(parents=True)
    services.mkdir(parents=True)
    for name in ("config", "other"):
        (timers / f"gitlab-machine-driver-sweep@{name}.timer").symlink_to(
            "/lib/systemd/system/gitlab-machine-driver-sweep@.timer"
        )
    (services / "gitlab-machine-driver-pool@config.service").symlink_to(
        "/lib/systemd/system/gitlab-machine-driver-pool@.service"
    )
    (services / "ssh.service").symlink_to("/lib/systemd/system/ssh.service")  # not ours
    done = maintainer_script(control, root, "prerm", "remove")
    assert done.returncode == 0, done.stderr
    left = sorted(p.name for p in (root / "etc/systemd/system").rglob("*") if p.is_symlink())
    assert left == ["ssh.service"]


RECORDS = {
    "a job's record": "jobs/7/state.json",
    "a pool machine": "pool/machines/gmd-pool-1/info.json",
    "a ready marker": "pool/ready/gmd-pool-2",
    "a tombstone": "tombstones/gmd-9@1712345678/config.json",
}


@pytest.mark.parametrize("record", [None, *RECORDS], ids=["no machine", *RECORDS])
def test_purge_removes_the_state_dir_only_when_it_records_no_machine(
    control: Path, unpacked: Path, tmp_path: Path, record: str | None
) -> None:
    root = installed_root(unpacked, tmp_path)
    state = root / "var/lib/gitlab-machine-driver"
    # What a host keeps once its machines are gone: logs, locks, metrics, the owner.
    for leftover in (
        "driver.log",
        "locks/sweep.lock",
        "locks/job-7.lock",
        "metrics.json",
        "owner.json",
        "pool/status.json",
        "jobs/8/known_hosts",
    ):
        (state / leftover).parent.mkdir(parents=True, exist_ok=True)
        (state / leftover).write_text("")
    if record:
        (state / RECORDS[record]).parent.mkdir(parents=True, exist_ok=True)
        (state / RECORDS[record]).write_text("{}")
    done = maintainer_script(control, root, "postrm", "purge")
    assert done.returncode == 0, done.stderr
    if record is None:
        assert not state.exists()
        assert done.stderr == ""
    else:
        assert (state / RECORDS[record]).exists() and (state / "driver.log").exists()
        assert f"{state} is kept: it records machines that may still exist" in done.stderr
        # Which record, by its path.
        shown = [line.strip() for line in done.stderr.splitlines() if line.startswith("  ")]
        assert [p for p in shown if str(state / RECORDS[record]).startswith(p)] != []
        assert "docker-machine rm" in done.stderr


@pytest.fixture
def debian_root(tmp_path: Path) -> Iterator[Path]:
    """A clean Debian (this host's release) from debootstrap, with /proc, as chroot target."""
    if os.environ.get("GMD_TEST_DEBIAN_ROOT") != "1":
        pytest.skip("takes minutes (debootstrap, apt): set GMD_TEST_DEBIAN_ROOT=1 to run it")
    needs(os.geteuid() == 0, "needs root (chroot)")
    needs(shutil.which("debootstrap") is not None, "needs debootstrap (apt install debootstrap)")
    release = run("sh", "-c", ". /etc/os-release; echo $VERSION_CODENAME").stdout.strip()
    root = tmp_path / "debian"
    cache = DEBIAN_ROOT_CACHE / f"{release}-minbase.tar"
    if cache.exists():
        root.mkdir()
        subprocess.run(["tar", "-xpf", str(cache), "-C", str(root)], check=True)
    else:
        made = run(
            "debootstrap", "--variant=minbase", release, str(root), DEBIAN_MIRROR, timeout=1800
        )
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
        cache.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-cpf", f"{cache}.tmp", "-C", str(root), "."], check=True)
        os.replace(f"{cache}.tmp", cache)
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)
        shutil.rmtree(root, ignore_errors=True)


def test_in_a_clean_debian_root_it_installs_works_removes_and_purges(
    deb: Path, debian_root: Path
) -> None:
    def chroot(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
        result = run("chroot", str(debian_root), *argv, env=env, timeout=900)
        if check:
            assert result.returncode == 0, f"{argv}: {result.stdout[-3000:]}{result.stderr[-3000:]}"
        return result

    shutil.copyfile(deb, debian_root / "tmp" / deb.name)
    chroot("apt-get", "update", "-qq")
    chroot("apt-get", "install", "-y", "-qq", "--no-install-recommends", f"/tmp/{deb.name}")
    assert chroot("sh", "-c", "command -v gitlab-machine-driver").stdout.strip() == (
        "/usr/bin/gitlab-machine-driver"
    )
    assert chroot("gitlab-machine-driver", "--version").stdout.startswith("gitlab-machine-driver ")
    stat = chroot("stat", "-c", "%a %U %G", "/etc/gitlab-machine-driver/config.toml").stdout
    assert stat.split() == ["640", "root", "root"]
    assert chroot("stat", "-c", "%a", "/var/lib/gitlab-machine-driver").stdout.strip() == "700"
    doctor = chroot("gitlab-machine-driver", "doctor", check=False)
    assert "ok    config file: /etc/gitlab-machine-driver/config.toml is valid" in doctor.stdout
    assert "FAIL  docker-machine" in doctor.stdout  # none in a clean root, and doctor says so

    # An admin enables an instance per config (the link `systemctl enable` makes: the
    # minimal root has no systemd); removing the package disables it.
    wants = debian_root / "etc/systemd/system/timers.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "gitlab-machine-driver-sweep@config.timer").symlink_to(
        "/lib/systemd/system/gitlab-machine-driver-sweep@.timer"
    )

    chroot("apt-get", "remove", "-y", "-qq", "gitlab-machine-driver")
    assert not (wants / "gitlab-machine-driver-sweep@config.timer").is_symlink()
    assert not (debian_root / "usr/bin/gitlab-machine-driver").exists()
    assert not (debian_root / "opt/gitlab-machine-driver").exists()  # no bytecode left behind
    assert (debian_root / "etc/gitlab-machine-driver/config.toml").exists()  # a conffile
    chroot("apt-get", "purge", "-y", "-qq", "gitlab-machine-driver")
    assert not (debian_root / "etc/gitlab-machine-driver").exists()
    assert not (debian_root / "var/lib/gitlab-machine-driver").exists()
    status = chroot("dpkg-query", "-W", "-f=${Status}", "gitlab-machine-driver", check=False)
    assert "installed" not in status.stdout or "not-installed" in status.stdout


def test_the_container_recipe_brings_runner_driver_and_docker_machine() -> None:
    recipe = (ROOT / "packaging" / "container" / "Dockerfile").read_text()
    assert "FROM ${BASE_IMAGE}" in recipe and "gitlab/gitlab-runner" in recipe
    assert "docker-machine --version" in recipe  # the fork is fetched at build time and checked
    assert "pip install" in recipe and "gitlab-machine-driver --version" in recipe
