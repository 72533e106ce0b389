"""Image mode: jobs run in their own ``image:`` with ``services:`` on the VM's Docker engine.

As gitlab-runner's docker executor (docker+machine) does it, inside the job's
own VM: a helper container for the runner's plumbing stages (sources, caches,
artifacts), a build container for the user's stages, services beside them on
a per-job network. Set up at prepare with the docker SDK over the engine's TLS
endpoint. Each container runs a keeper that takes its stages through a FIFO in
a channel dir bound into it: a stage is a token written there by the VM-side
wrapper of ``run``, never a ``docker exec`` (only a cancel execs).

Modules: ``config`` (the admin's ``[image]`` section), ``payload`` (what the job
asks for), ``policy`` (allow-lists, pull policies, users), ``aliases`` (service
host names), ``auth`` (registry credentials), ``plan`` (what a job runs in, before
any machine), ``host_config`` (which container gets which of the admin's container
options), ``engine`` (the client of the VM's engine), ``pull`` (the job's images),
``containers`` (prepare's and the pool's start of the containers), ``programs`` (the
keeper and the other shell programs, from ``sh/``) and ``stage`` (the lean per-stage
lookup ``run`` imports).
"""
