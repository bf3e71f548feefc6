FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git openssh-client \
    && rm -rf /var/lib/apt/lists/*

# The CI never runs as root. Its numeric uid/gid (10001) is what the host's
# secret files and bind-mounted keys must be readable by (docs/deployment.md):
# Compose mounts file secrets with their host owner and mode.
RUN groupadd --system --gid 10001 hyperv-ci \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/hyperv-ci \
        --create-home --shell /usr/sbin/nologin hyperv-ci \
    && install -d -o 10001 -g 10001 -m 0755 /srv/hyperv-ci/logs
# A new, empty named volume mounted here takes this directory's owner and
# mode (moby's copyExistingContents copies the image's mount point into it),
# so the compose file's log volume is writable by the CI user, no chown needed.

WORKDIR /opt/hyperv-ci
COPY pyproject.toml README.md ./
COPY ci ci
COPY listener listener
COPY runners runners
COPY dashboard dashboard
COPY sim sim
RUN pip install --no-cache-dir .

# Numeric, so a runtime that enforces non-root users can verify it.
USER 10001:10001
ENV HOME=/var/lib/hyperv-ci
