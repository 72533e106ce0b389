"""gitlab-machine-driver: one fresh docker-machine VM per GitLab CI job."""

__version__ = "0.1.0"
NAME = "gitlab-machine-driver"
