# circuitd: one image for the API and the workers (the API process never imports torch).
#   CPU workers:  docker build --build-arg TORCH_INDEX=--index-url=<CPU wheel index> -t circuitd .
#   GPU workers:  docker build --build-arg TORCH_INDEX=--index-url=<CUDA wheel index> -t circuitd:gpu .
# With TORCH_INDEX empty pip takes torch from the default index (a CUDA build on x86_64 Linux).
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CIRCUITD_DATA_DIR=/data \
    HF_HOME=/cache/huggingface

WORKDIR /app
# torch first, in its own layer: it is by far the largest and changes least.
RUN pip install ${TORCH_INDEX} "${TORCH_SPEC}"
COPY pyproject.toml README.md ./
COPY circuitd ./circuitd
COPY graphs ./graphs
COPY workers ./workers
COPY api ./api
# /data holds the default SQLite store and broker and an API key: its user's only (0700).
# The processes run as that user, never root.
RUN pip install . \
    && useradd --create-home --uid 1000 circuitd \
    && mkdir -p /data /cache/huggingface \
    && chown -R circuitd /data /cache \
    && chmod 0700 /data

USER circuitd
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["circuitd", "api", "--host", "0.0.0.0", "--port", "8000"]
