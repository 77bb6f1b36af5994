# One image for every wx_orchestration process. Pick the role with the command:
#   webserver   : dagster-webserver -h 0.0.0.0 -p 3000 -w /app/workspace.yaml   (default)
#   daemon      : dagster-daemon run -w /app/workspace.yaml
#   sidecar     : wx-sidecar            (WX_SIDECAR_HOST=0.0.0.0 to listen beyond loopback)
#   migrations  : wx migrate            (run once per release, before the rest)
# The webserver and the daemon load the code location from workspace.yaml themselves
# (`python_module`): there is no separate gRPC code server to keep in step.
# Configuration is environment only (see README: DATABASE_URL, REDIS_URL, LIBRARY_METADATA_URL,
# LML_API_KEY, DAGSTER_PG_URL, DAGSTER_HOME, SENTRY_DSN, ...). No secret is baked in.

# Build stage: the locked dependencies, then the runtime wheel (no dev stack) into a venv.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY wx_orchestration ./wx_orchestration
RUN pip install --no-deps .

# Run stage: the venv, the SQL and the instance config; no compiler, no pip cache, no sources.
FROM python:3.11-slim
# MPLCONFIGDIR: the report's chart (matplotlib) keeps its font cache where `wx` may write.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    DAGSTER_HOME=/opt/dagster/home \
    WX_SQL_DIR=/app/sql \
    MPLCONFIGDIR=/tmp/matplotlib
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY sql ./sql
COPY workspace.yaml dagster.yaml ./
RUN mkdir -p "$DAGSTER_HOME" \
    && cp dagster.yaml "$DAGSTER_HOME/dagster.yaml" \
    && useradd --system --uid 10001 --home-dir /app wx \
    && chown -R wx "$DAGSTER_HOME"

USER wx
EXPOSE 3000 8686
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/app/workspace.yaml"]
