"""[image]'s container options: each reaches the containers the docker executor gives it to,
in the form the engine gets from docker-py, and bad values are refused at load."""

from __future__ import annotations

from typing import Any

import pytest
from docker.api.client import APIClient

from driver.errors import ConfigError
from driver.image import host_config
from driver.image.config import ImageSettings
from driver.image.host_config import Role
from driver.settings import parse_settings


def image(**settings: Any) -> ImageSettings:
    """As the driver loads it: through the config file's validation."""
    return parse_settings({"image": {"mode": "container", **settings}}).image


def engine_host_config(settings: ImageSettings, role: Role, name: str = "ruby:3.2") -> Any:
    """What the engine receives: docker-py's own create_host_config, no engine needed."""
    api = APIClient(base_url="tcp://127.0.0.1:1", version="1.44")
    return api.create_host_config(
        binds=["/builds:/builds:rw"],
        network_mode="job-network",
        **host_config.for_role(settings, role, image=name),
    )


EVERYTHING = image(
    shm_size=268435456,
    devices=["/dev/fuse", "/dev/kvm:/dev/kvm:rw"],
    dns=["10.0.0.2"],
    dns_search=["corp.example"],
    extra_hosts=["registry.local:10.0.0.5"],
    tmpfs={"/tmp": "rw,noexec,size=64m"},
    services_tmpfs={"/var/lib/postgresql/data": "rw"},
    memory="1.5g",
    memory_swap="2g",
    memory_reservation="512m",
    cpus="1.5",
    cpuset_cpus="0-1",
    oom_kill_disable=True,
    sysctls={"net.ipv4.ip_forward": "1"},
    ulimit={"nofile": "1024:2048", "nproc": "512"},
    security_opt=["seccomp=unconfined"],
    cap_add=["NET_ADMIN"],
    cap_drop=["MKNOD"],
)


def test_the_build_container_gets_every_option_as_the_engine_expects_it() -> None:
    config = engine_host_config(EVERYTHING, "build")
    assert config["ShmSize"] == 256 * 1024 * 1024
    assert config["Devices"] == [
        {"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse", "CgroupPermissions": "rwm"},
        {"PathOnHost": "/dev/kvm", "PathInContainer": "/dev/kvm", "CgroupPermissions": "rw"},
    ]
    assert config["Dns"] == ["10.0.0.2"]
    assert config["DnsSearch"] == ["corp.example"]
    assert config["ExtraHosts"] == ["registry.local:10.0.0.5"]
    assert config["Tmpfs"] == {"/tmp": "rw,noexec,size=64m"}
    assert config["Memory"] == 1536 * 1024 * 1024  # binary units, as gitlab-runner reads them
    assert config["MemorySwap"] == 2 * 1024**3
    assert config["MemoryReservation"] == 512 * 1024**2
    assert config["NanoCpus"] == 1_500_000_000
    assert config["CpusetCpus"] == "0-1"
    assert config["OomKillDisable"] is True
    assert config["Sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert config["Ulimits"] == [
        {"Name": "nofile", "Soft": 1024, "Hard": 2048},
        {"Name": "nproc", "Soft": 512, "Hard": 512},  # one number: soft and hard
    ]
    assert config["SecurityOpt"] == ["seccomp=unconfined"]
    assert (config["CapAdd"], config["CapDrop"]) == (["NET_ADMIN"], ["MKNOD"])
    # The caller's own arguments are untouched.
    assert config["Binds"] == ["/builds:/builds:rw"]
    assert config["NetworkMode"] == "job-network"


def test_the_helper_gets_the_build_containers_options_but_no_elevation() -> None:
    build = engine_host_config(EVERYTHING, "build")
    helper = engine_host_config(EVERYTHING, "helper")
    elevation = ("CapAdd", "CapDrop", "Privileged")
    assert {k: v for k, v in helper.items() if k not in elevation} == {
        k: v for k, v in build.items() if k not in elevation
    }
    assert "CapAdd" not in helper and "CapDrop" not in helper
    privileged = image(privileged=True)
    assert host_config.for_role(privileged, "helper", image="helper:x")["privileged"] is False


def test_services_get_only_what_the_docker_executor_gives_them() -> None:
    config = engine_host_config(EVERYTHING, "service", "postgres:15")
    # Shared with build and helper.
    assert config["ShmSize"] == 256 * 1024 * 1024
    assert config["Dns"] == ["10.0.0.2"]
    assert config["DnsSearch"] == ["corp.example"]
    assert config["ExtraHosts"] == ["registry.local:10.0.0.5"]
    # Their own tmpfs, not the build container's.
    assert config["Tmpfs"] == {"/var/lib/postgresql/data": "rw"}
    # Limits, devices, ulimits, sysctls and security options are the build container's.
    for key in (
        "Memory",
        "MemorySwap",
        "MemoryReservation",
        "NanoCpus",
        "CpusetCpus",
        "Devices",
        "OomKillDisable",
        "Sysctls",
        "Ulimits",
        "SecurityOpt",
    ):
        assert key not in config, key


def test_services_security_opt_is_the_services_and_security_opt_the_builds() -> None:
    """What docker:dind needs where --privileged is refused (seccomp lets runc make its
    keyring), without unconfining the job's own container."""
    both = image(security_opt=["no-new-privileges"], services_security_opt=["seccomp=unconfined"])
    assert engine_host_config(both, "service")["SecurityOpt"] == ["seccomp=unconfined"]
    assert engine_host_config(both, "build")["SecurityOpt"] == ["no-new-privileges"]
    assert engine_host_config(both, "helper")["SecurityOpt"] == ["no-new-privileges"]


def test_the_build_tmpfs_stays_out_of_services_and_services_tmpfs_out_of_the_build() -> None:
    only_build = image(tmpfs={"/tmp": "rw"})
    only_services = image(services_tmpfs={"/data": "rw"})
    assert "Tmpfs" not in engine_host_config(only_build, "service")
    assert engine_host_config(only_build, "build")["Tmpfs"] == {"/tmp": "rw"}
    assert "Tmpfs" not in engine_host_config(only_services, "build")
    assert engine_host_config(only_services, "service")["Tmpfs"] == {"/data": "rw"}


def test_defaults_pass_nothing_but_privileged() -> None:
    for role in host_config.ROLES:
        assert host_config.for_role(image(), role, image="ruby:3.2") == {"privileged": False}
    assert host_config.network_options(image()) == {}


@pytest.mark.parametrize(
    ("settings", "service", "expected"),
    [
        ({"privileged": True}, "docker:24-dind", True),  # unset: follows privileged
        ({"privileged": False}, "docker:24-dind", False),
        ({"privileged": True, "services_privileged": False}, "docker:24-dind", False),
        ({"privileged": False, "services_privileged": True}, "docker:24-dind", True),
        (
            {"services_privileged": True, "allowed_privileged_services": ["docker:*-dind"]},
            "docker:24-dind",
            True,
        ),
        (
            {"services_privileged": True, "allowed_privileged_services": ["docker:*-dind"]},
            "postgres:15",
            False,
        ),
        (  # doublestar, as allowed_images: `*` stops at `/`
            {"privileged": True, "allowed_privileged_services": ["*:*-dind"]},
            "registry.example/docker:24-dind",
            False,
        ),
    ],
)
def test_services_privileged_and_its_allow_list(
    settings: dict[str, Any], service: str, expected: bool
) -> None:
    config = engine_host_config(image(**settings), "service", service)
    assert config.get("Privileged", False) is expected


def test_the_build_container_is_privileged_only_for_allowed_privileged_images() -> None:
    settings = image(privileged=True, allowed_privileged_images=["docker:*", "registry.x/**"])
    assert host_config.for_role(settings, "build", image="docker:24-cli")["privileged"] is True
    assert host_config.for_role(settings, "build", image="registry.x/a/b:1")["privileged"] is True
    assert host_config.for_role(settings, "build", image="ruby:3.2")["privileged"] is False
    # Service privilege has its own list: allowed_privileged_images does not limit it.
    assert host_config.for_role(settings, "service", image="ruby:3.2")["privileged"] is True
    unlisted = image(privileged=True)
    assert host_config.for_role(unlisted, "build", image="anything:1")["privileged"] is True


def test_the_per_job_network_gets_network_mtu() -> None:
    options = host_config.network_options(image(network_mtu=1400))
    assert options == {"options": {"com.docker.network.driver.mtu": "1400"}}


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of build, service, helper"):
        host_config.for_role(image(), "sidecar", image="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"shm_size": -1}, "[image] shm_size: Input should be greater than or equal to 0"),
        ({"devices": ["dev/fuse"]}, "[image] devices: device 'dev/fuse' must be '/dev/host["),
        ({"devices": ["/a:/b:/c:rw"]}, "[image] devices: device '/a:/b:/c:rw' must be"),
        ({"devices": ["/dev/kvm:/dev/kvm:rwx"]}, "permissions of r, w, m"),
        ({"dns": ["dns.example"]}, "[image] dns: DNS server 'dns.example' must be an IP"),
        ({"dns_search": [""]}, "[image] dns_search: search domain '' must be a domain"),
        ({"extra_hosts": ["registry.local"]}, "[image] extra_hosts: extra host 'registry.local'"),
        ({"extra_hosts": ["a:not-an-ip"]}, "must be 'hostname:IP'"),
        ({"tmpfs": {"tmp": "rw"}}, "[image] tmpfs: tmpfs path 'tmp' must be an absolute path"),
        ({"services_tmpfs": {"data": ""}}, "[image] services_tmpfs: tmpfs path 'data'"),
        ({"memory": "1 gigabyte"}, "[image] memory: '1 gigabyte' must be a size"),
        ({"memory": "-1g"}, "[image] memory: '-1g' must be a size"),
        ({"memory_swap": "1g"}, "[image] memory_swap: is memory plus swap: set memory too"),
        (
            {"memory": "2g", "memory_swap": "1g"},
            "[image] memory_swap: is memory plus swap: it must be at least memory (2g)",
        ),
        (
            {"memory": "1g", "memory_reservation": "2g"},
            "[image] memory_reservation: must not be above memory (1g)",
        ),
        ({"memory_reservation": "lots"}, "[image] memory_reservation: 'lots' must be a size"),
        ({"cpus": "two"}, "[image] cpus: 'two' is not a number of CPUs"),
        ({"cpus": "0"}, "[image] cpus: must be a number of CPUs above 0"),
        ({"cpuset_cpus": "0..3"}, "[image] cpuset_cpus: must list CPUs"),
        (
            {"oom_kill_disable": "maybe"},
            "[image] oom_kill_disable: Input should be a valid boolean",
        ),
        ({"sysctls": {"ip_forward": "1"}}, "[image] sysctls: sysctl 'ip_forward' must be"),
        ({"ulimit": {"files": "10"}}, "[image] ulimit: ulimit 'files' is not one of core"),
        ({"ulimit": {"nofile": "lots"}}, 'must be "soft:hard" or one number'),
        ({"ulimit": {"nofile": "2048:1024"}}, "the soft limit is above the hard one"),
        ({"network_mtu": 40}, "[image] network_mtu: must be 0 (the engine's) or 68 to 65535"),
        ({"security_opt": ["privileged"]}, "[image] security_opt: security option 'privileged'"),
        ({"security_opt": ["seccomp"]}, "KEY one of label, apparmor, seccomp"),
        ({"services_privileged": "sometimes"}, "[image] services_privileged: Input should be"),
    ],
)
def test_bad_values_are_refused_naming_the_key_and_what_is_allowed(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        image(**settings)
    assert message in str(refused.value)


def test_docker_forms_are_accepted() -> None:
    settings = image(
        memory="512M",
        memory_swap="1GiB",
        memory_reservation="100000",
        cpus="3/2",
        extra_hosts=["gw:host-gateway", "v6:::1", "v6b:[::1]"],
        ulimit={"core": "-1", "memlock": "-1:-1", "stack": "8192:-1"},
        security_opt=["no-new-privileges", "no-new-privileges:true", "label=disable"],
    )
    args = host_config.for_role(settings, "build", image="x")
    assert (args["mem_limit"], args["memswap_limit"]) == (512 * 1024**2, 1024**3)
    assert args["mem_reservation"] == 100000
    assert args["nano_cpus"] == 1_500_000_000
