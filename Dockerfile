# One image for every role (web, dispatcher, later bridge); the command picks the role.
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DATA_DIR=/var/lib/aegis
WORKDIR /app
RUN useradd --system --home /app --uid 10001 aegis && mkdir -p /var/lib/aegis && chown aegis /var/lib/aegis
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY --chown=aegis . .
USER aegis
EXPOSE 8000
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "aegis_site.asgi:application"]
