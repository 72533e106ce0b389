"""The operator's commands, one module each: sweep, ls, doctor, pool, ssh, job, migrate.

The four entrypoints gitlab-runner calls (config, prepare, run, cleanup) are in
``driver.stages``. Every module exposes ``main(args) -> int``.
"""
