# syntax=docker/dockerfile:1
# One image for every DropSlot service and one-shot task; docker-compose.yml and deploy/
# choose what runs through the command.

FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1


# Only the lock and the workspace's pyproject.toml files, at their paths: the dependency
# layer below is then rebuilt when one of them changes, not on every source edit.
FROM base AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name pyproject.toml ! -name uv.lock -delete \
    && find . -depth -type d -empty -delete


FROM base AS build
# The uv that wrote uv.lock; an older one may not read the lock's format.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
COPY --from=manifests /src/ ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-workspace
COPY . .
# Workspace members stay editable: alembic.ini and migrations/ are read from
# services/<name>/ at run time, so the source tree ships anyway.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev


# The runtime image carries neither uv nor its cache.
FROM base
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin dropslot
WORKDIR /app
COPY --from=build /app /app
ENV PATH="/app/.venv/bin:${PATH}"
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001
EXPOSE 8000
CMD ["python", "-c", "raise SystemExit('choose a command: uvicorn dropslot_<service>.main:create_app --factory ..., python -m dropslot_gateway.server, python -m dropslot_kit.bootstrap, or python -m dropslot_kit.migrate <service>')"]
