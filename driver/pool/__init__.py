"""A warm pool of ready, single-use machines.

The pool service (`gitlab-machine-driver pool`) keeps `idle_count` machines
created, SSH-ready with pinned host keys, Docker-ready and with images
pulled. Prepare claims one by an atomic rename of its marker file
(ready/NAME -> claimed/NAME): two jobs can never get the same machine, and
claiming needs no service, so jobs run whether it is up or not. A claimed
machine belongs to its job and is destroyed by the job's cleanup: it never
goes back to the pool.

    <state_dir>/pool/machines/NAME/   info.json, ssh_config, known_hosts
    <state_dir>/pool/ready/NAME       marker: idle and ready to claim
    <state_dir>/pool/claimed/NAME     marker: taken by a prepare, being handed over
"""
