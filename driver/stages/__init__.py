"""The four entrypoints gitlab-runner calls, one module each (shared/custom-executor.md).

    config   config_exec:  tell the runner where builds go (JSON on stdout)
    prepare  prepare_exec: create this job's machine, or take one from the warm pool
    run      run_exec:     run one stage's script in the machine (once per stage: lean)
    cleanup  cleanup_exec: destroy the job's machine (idempotent)

Shared by them: ``common`` (what each does first), ``stopped`` (prepare's start of a
stopped pool machine, [pool] stopped_count).

The operator's commands (sweep, ls, doctor, pool, ssh, job, migrate,
config-example) are in ``driver.commands``.
"""
