"""A GitLab Runner emulation for the custom executor.

It calls a driver's config/prepare/run/cleanup executables exactly as
gitlab-runner does, for integration tests, benchmarks and the README demo::

    config = CustomExecutorConfig(
        config_exec="gitlab-machine-driver", config_args=["--config", path, "config"],
        prepare_exec="gitlab-machine-driver", prepare_args=["--config", path, "prepare"],
        run_exec="gitlab-machine-driver", run_args=["--config", path, "run"],
        cleanup_exec="gitlab-machine-driver", cleanup_args=["--config", path, "cleanup"],
        build_failure_exit_code=33, system_failure_exit_code=34, graceful_kill_timeout=5,
    )
    result = RunnerEmulator(config).run_job(
        Job(script=["exit 42"], after_script=["echo after"]),
        cancel=None,  # or CancelPlan("build_script", after=2.0, mode="cancel")
    )
    assert result.outcome == "failed" and result.exit_code == 42, result.describe()
"""

from .emulator import (
    CancelPlan,
    CustomExecutorConfig,
    ExecRecord,
    JobResult,
    JobRun,
    PreparedJob,
    RunnerEmulator,
)
from .job import (
    BuildContext,
    Job,
    Service,
    Variable,
    output_lines,
    render_script,
    shell_quote,
)

__all__ = [
    "BuildContext",
    "CancelPlan",
    "CustomExecutorConfig",
    "ExecRecord",
    "Job",
    "JobResult",
    "JobRun",
    "PreparedJob",
    "RunnerEmulator",
    "Service",
    "Variable",
    "output_lines",
    "render_script",
    "shell_quote",
]
