#!/bin/sh
# Writes the secret files docker-compose.yml mounts (only those missing; re-running changes nothing):
#   secret_key, postgres_password, database_url (uses that password), metrics_token,
#   backup_key (Fernet, for `backup --encrypt`), artifact_store_user + artifact_store_key (MinIO's root
#   user, which the roles sign artifact URLs with), tls.crt + tls.key (self-signed for PUBLIC_HOST:
#   replace them with a real certificate).
# Usage: sh deploy/docker/make-secrets.sh [DIR]    (DIR defaults to ./secrets; PUBLIC_HOST from the
# environment, else from ./.env, else localhost). Needs only sh and openssl.
set -eu
dir=${1:-./secrets}
if [ -z "${PUBLIC_HOST:-}" ] && [ -f .env ]; then
    PUBLIC_HOST=$(sed -n 's/^PUBLIC_HOST=//p' .env | tail -n 1)
fi
host=${PUBLIC_HOST:-localhost}

# The directory keeps other users of the host out; the files themselves stay readable (0644) because
# Compose bind-mounts them as they are and the containers read them as their own users (aegis, postgres).
mkdir -p "$dir"
chmod 700 "$dir"
umask 022

write() {  # write NAME VALUE: create $dir/NAME unless it exists
    if [ ! -s "$dir/$1" ]; then
        printf '%s' "$2" > "$dir/$1"
        echo "wrote $dir/$1"
    fi
}

write secret_key "$(openssl rand -base64 48 | tr -d '\n')"
write postgres_password "$(openssl rand -hex 24)"
write database_url "postgres://aegis:$(cat "$dir/postgres_password")@postgres:5432/aegis"
write metrics_token "$(openssl rand -hex 32)"
write backup_key "$(openssl rand -base64 32 | tr '+/' '-_' | tr -d '\n')"
write artifact_store_user aegis
write artifact_store_key "$(openssl rand -hex 24)"
if [ ! -s "$dir/tls.crt" ] || [ ! -s "$dir/tls.key" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 90 \
        -subj "/CN=$host" -addext "subjectAltName=DNS:$host" \
        -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null
    chmod 644 "$dir/tls.key"
    echo "wrote $dir/tls.crt and $dir/tls.key (self-signed for $host: replace with a real certificate)"
fi
