"""Image mode: jobs run in their own ``image:`` with ``services:`` on the VM's Docker engine.

As gitlab-runner's docker executor (docker+machine) does it, inside the job's
own VM: a helper container for the runner's plumbing stages (sources, caches,
artifacts), a build container for the user's stages, services beside them on
a per-job network. Set up at prepare with the docker SDK over the engine's TLS
endpoint (driver/engine.py, the package's one client of it). Each container runs a
keeper that takes its stages through a FIFO in a channel dir bound into it: a stage
is a token written there by the VM-side wrapper of ``run``, never a ``docker exec``.
A cancel goes to the keeper too; only a keeper that does not answer it within 2 s
gets a ``docker exec`` that signals the container's processes.

Modules: ``config`` (the admin's ``[image]`` section), ``payload`` (what the job
asks for), ``policy`` (allow-lists, pull policies, users), ``aliases`` (service
host names), ``auth`` (registry credentials), ``reference`` (image references,
parsed), ``plan`` (what a job runs in, before any machine), ``host_config`` (which
container gets which of the admin's container options), ``binds`` (what the
containers bind), ``pull`` and ``progress`` (the job's images, and the job log's
lines while they come), ``helper`` (the default helper from the runner host's
tarball), ``containers`` (prepare's and the pool's start of the containers),
``health`` (the services' ports, waited for), ``programs`` (the keeper and the
other shell programs, from ``sh/``), ``stage`` (the lean per-stage lookup ``run``
imports), ``learn`` (the images recent jobs ran, for the pool) and ``migrate``
(``[runners.docker]`` to ``[image]``).
"""
