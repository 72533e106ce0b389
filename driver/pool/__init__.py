"""A warm pool of ready, single-use machines.

The pool service (`gitlab-machine-driver pool`) keeps as many machines ready
as its policy wants (`[pool] policy`: docker+machine's `idle_count` and periods,
or the demand it learns, driver/pool/control.py): created, SSH-ready with
pinned host keys, Docker-ready, with images pulled and (image mode, with a
fixed `[image] helper_image`) the helper container started. Prepare claims one
by an atomic rename of its marker file (ready/NAME -> claimed/NAME@JOB): two
jobs can never get the same machine, and claiming needs no service, so jobs run
whether it is up or not. A claimed
machine belongs to its job and is destroyed by the job's cleanup: it never
goes back to the pool. A ready machine to be removed (beyond what the policy
wants, a failed health check, a drain on stop, or the sweeper's) is renamed
from ready/ to withdrawn/ first, so no prepare can claim it meanwhile; one
whose preparation failed is marked withdrawn too.

    <state_dir>/pool/machines/NAME/     info.json (PoolRecord), ssh_config, known_hosts
    <state_dir>/pool/ready/NAME         marker: idle and ready to claim
    <state_dir>/pool/claimed/NAME@JOB   marker: taken by job JOB's prepare, being handed over
    <state_dir>/pool/withdrawn/NAME     marker: out of the ready set, being removed

No marker beside machines/NAME: the service is creating it (under locks/pool-NAME.lock).
"""
