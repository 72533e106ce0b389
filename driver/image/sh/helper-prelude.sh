command -v gitlab-runner >/dev/null 2>&1 || { h=$(command -v gitlab-runner-helper) && mkdir -p /usr/local/bin && ln -sf "$h" /usr/local/bin/gitlab-runner; }; umask 0000;
