# syntax=docker/dockerfile:1
# One image for every role; the command picks the role (docker-compose.yml, deploy/k8s/):
#   web         daphne -v 0 -b 0.0.0.0 -p 8000 aegis_site.asgi:application   (the default; -v 0: no plain-text access log, the app logs requests as JSON)
#   bridge      python manage.py run_bridge
#   dispatcher  python manage.py run_dispatcher
#   one-shots   python manage.py migrate --noinput | setup_broker ... | backup | check_certs ...
# Pin the base by digest for reproducible builds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY requirements.txt /tmp/requirements.txt
# Wheels only: every pinned dependency ships one, so neither stage needs a compiler.
RUN /opt/venv/bin/pip install --only-binary=:all: -r /tmp/requirements.txt

FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    DEBUG=false \
    DATA_DIR=/var/lib/aegis \
    BACKUP_DIR=/var/lib/aegis/backups \
    BROKER_DIR=/etc/aegis/broker \
    STATIC_ROOT=/app/staticfiles \
    STATICFILES_MANIFEST=true
# The directories a volume is mounted on belong to the aegis user here, so a new named volume starts
# with that owner (Docker copies the image's directory into an empty volume): the certs service writes
# the broker directory, Mosquitto (run as the same uid) its persistence under it.
RUN useradd --system --uid 10001 --user-group --home-dir /app --no-create-home aegis \
    && install -d -o aegis -g aegis /var/lib/aegis /var/lib/aegis/backups /etc/aegis/broker /etc/aegis/broker/data
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# The code stays root's: the service user can run it, not change it.
COPY . .
RUN SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0 \
    && python -m compileall -q aegis_site aegis_agent broker ops registry tasks
USER aegis:aegis
EXPOSE 8000
# Role-aware: web answers /healthz; bridge and dispatcher have a fresh role heartbeat; one-shots pass.
HEALTHCHECK --interval=30s --timeout=10s --start-period=40s --retries=3 CMD ["python", "deploy/docker/healthcheck.py"]
CMD ["daphne", "-v", "0", "-b", "0.0.0.0", "-p", "8000", "aegis_site.asgi:application"]

# `--target tools`: the runtime plus pg_dump/pg_restore for backup, restore and disaster_recovery
# (ops/backup/postgres.py; the client must be at least the server's major version: PostgreSQL 15 here).
FROM runtime AS tools
USER root
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client-15 \
    && rm -rf /var/lib/apt/lists/*
USER aegis:aegis

# The default target: every long-running role.
FROM runtime
