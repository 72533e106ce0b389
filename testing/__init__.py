"""The test harness: a product of its own, apart from the tests that use it.

- ``docker_machine`` and ``bin/docker-machine``: the docker-machine test double
  (also the demo's "cloud"): each machine a real sshd and dockerd in its own
  network namespace;
- ``runner``: the GitLab Runner emulation (also the demo's runner), calling the
  four entrypoints exactly as gitlab-runner does;
- ``world``: one test world (storage, state dir, config, runner) for tests and
  benchmarks; ``images``: test images and a registry on a test host;
  ``fake_gitlab``: a local server answering GitLab's job and pipeline endpoints.

Its own tests live under ``tests/doubles`` and ``tests/runner``.
"""
