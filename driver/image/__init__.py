"""Image mode: jobs run in their own ``image:`` with ``services:`` on the VM's Docker engine.

As gitlab-runner's docker executor (docker+machine) does it, inside the job's
own VM: a helper container for the runner's plumbing stages (sources, caches,
artifacts), a build container for the user's stages, services beside them on
a per-job network. Set up at prepare with the docker SDK over the engine's TLS
endpoint; each stage is one ``docker exec`` from the VM-side wrapper of ``run``.

Modules: ``config`` (the admin's ``[image]`` section), ``payload`` (what the job
asks for), ``policy`` (allow-lists, pull policies, users), ``aliases`` (service
host names), ``auth`` (registry credentials), ``host_config`` (which container
gets which of the admin's container options), ``setup`` (prepare's work) and
``stage`` (the lean per-stage lookup ``run`` imports).
"""
