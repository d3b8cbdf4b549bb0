# One image for every role of a PrfaaS deployment: the command line picks it.
#   docker run IMAGE up --engine emulated                     # the embedded deployment
#   docker run IMAGE router --config /etc/prfaas/topology.toml
#   docker run IMAGE prefill --config ... --instance prfaas-p0
#   docker run --entrypoint ray IMAGE start --head ...        # a Ray node (docs/deploy.md)
# The install steps are the Makefile's (tests/unit/test_packaging.py compares them): torch first,
# then the pinned rest with every extra. For the CPU-only torch wheel build with
#   docker build --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu .
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

# iproute2 (ip, tc), openssl, chromium and chromium-driver: what the network-namespace, mutual-TLS
# and dashboard browser tests drive, so the test suite runs whole in the image (.ci/run installs
# the same packages where they are missing)
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 openssl chromium chromium-driver \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/prfaas
COPY pyproject.toml requirements.lock README.md ./
COPY src ./src
RUN python -m pip install --quiet --disable-pip-version-check torch==2.13.0
RUN python -m pip install --quiet --disable-pip-version-check \
        -c requirements.lock '.[dev,plot,client,ray,engine]'
COPY examples ./examples

# the router's API (prfaas up's default port); Ray's GCS when the container is a head node
EXPOSE 8000 6379
ENTRYPOINT ["prfaas"]
CMD ["--help"]
