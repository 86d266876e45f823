# One Dockerfile for every vlmq process. The default build (API, `migrate`, webhooks, Flower)
# installs only the base dependencies: no torch, transformers or vLLM, so the image that faces
# the network stays small and carries no inference stack. The GPU worker builds with
# `--build-arg EXTRAS=gpu` (its engines plus vLLM); EXTRAS=worker gives the engines without vLLM.
FROM python:3.11-slim

ARG EXTRAS=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface

# Triton (used by vLLM) compiles a small C helper at run time, so the GPU image needs a compiler.
RUN case ",$EXTRAS," in *,gpu,*) \
        apt-get update \
        && apt-get install -y --no-install-recommends gcc libc6-dev \
        && rm -rf /var/lib/apt/lists/*;; \
    esac

WORKDIR /app

# Copy only the sources (not .venv or .vlmq from a developer checkout).
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations

# Editable install keeps `migrations/` beside `shared/`, where `vlmq migrate` looks for it.
RUN pip install -e ".${EXTRAS:+[$EXTRAS]}"

EXPOSE 8000
CMD ["vlmq", "api", "--host", "0.0.0.0", "--port", "8000"]
