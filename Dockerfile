# One image for every wx_orchestration process. Pick the role with the command:
#   code server : dagster api grpc -m wx_orchestration.definitions -h 0.0.0.0 -p 4000   (default)
#   webserver   : dagster-webserver -h 0.0.0.0 -p 3000 -w /app/workspace.yaml
#   daemon      : dagster-daemon run -w /app/workspace.yaml
#   sidecar     : wx-sidecar            (WX_SIDECAR_HOST=0.0.0.0 to listen beyond loopback)
#   migrations  : wx migrate            (run once per release, before the rest)
# Configuration is environment only (see README: DATABASE_URL, REDIS_URL, LIBRARY_METADATA_URL,
# LML_API_KEY, DAGSTER_PG_URL, DAGSTER_HOME, SENTRY_DSN, ...). No secret is baked in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    WX_SQL_DIR=/app/sql

WORKDIR /app
COPY pyproject.toml README.md ./
COPY wx_orchestration ./wx_orchestration
COPY sql ./sql
COPY workspace.yaml dagster.yaml ./
RUN pip install --no-cache-dir . \
    && mkdir -p "$DAGSTER_HOME" \
    && cp dagster.yaml "$DAGSTER_HOME/dagster.yaml" \
    && useradd --system --uid 10001 --home-dir /app wx \
    && chown -R wx "$DAGSTER_HOME"

USER wx
EXPOSE 3000 4000 8686
CMD ["dagster", "api", "grpc", "-m", "wx_orchestration.definitions", "-h", "0.0.0.0", "-p", "4000"]
