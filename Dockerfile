# Sightline service image: `docker build -t sightline .` then
#   docker run -p 8000:8000 -v $PWD/runs/demo/bundle:/bundle:ro -v sightline-data:/data sightline
# The bundle is mounted read-only (exported first: `sightline export RUN --int8 --data DATA`); predictions and
# API keys live in /data (SQLite) unless SIGHTLINE_DATABASE_URL points at PostgreSQL.
# Create a key inside the container: docker exec <id> sightline keys create NAME

# ---- build stage: wheels for the package and its dependencies (CPU torch) ----------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sightline ./sightline
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple \
      ".[postgres]" \
 && /opt/venv/bin/pip uninstall -y pip

# ---- runtime stage: the venv only, a non-root user, no compilers ----------------------------------------
FROM python:3.11-slim AS runtime
RUN groupadd --system sightline && useradd --system --gid sightline --home-dir /data --shell /usr/sbin/nologin sightline \
 && mkdir -p /data /bundle && chown sightline:sightline /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SIGHTLINE_BUNDLE=/bundle \
    SIGHTLINE_DATABASE_URL=sqlite:////data/sightline.db \
    SIGHTLINE_HOST=0.0.0.0 \
    SIGHTLINE_PORT=8000
USER sightline
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"SIGHTLINE_PORT\"]}/healthz', timeout=4)" || exit 1
# exec form: sightline (uvicorn) is PID 1 and gets SIGTERM itself: it finishes in-flight requests, then stops
STOPSIGNAL SIGTERM
CMD ["sightline", "serve", "/bundle"]
