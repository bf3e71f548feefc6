FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git openssh-client \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/hyperv-ci
COPY pyproject.toml README.md ./
COPY ci ci
COPY listener listener
COPY runners runners
COPY dashboard dashboard
COPY sim sim
RUN pip install --no-cache-dir .
USER nobody
