"""migrate: docker+machine runners in gitlab-runner's config.toml -> driver configs."""
