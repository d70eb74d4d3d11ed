#!/bin/sh
# Entrypoint of the rossflow image: turns NAME_FILE=/path into NAME=<contents of /path>, then
# runs the command. This is the convention of the official postgres and redis images: compose
# secrets (files under /run/secrets) never appear in the compose file, `docker inspect` or `ps`.
#
#   PREFECT_API_DATABASE_PASSWORD_FILE=/run/secrets/postgres_password  ->  PREFECT_API_DATABASE_PASSWORD
#   ROSSFLOW_ROSSUM_PASSWORD_FILE=/run/secrets/rossum_password         ->  ROSSFLOW_ROSSUM_PASSWORD
#
# Only PREFECT_*_FILE, ROSSFLOW_*_FILE and the three AWS credential variables are converted: other
# *_FILE variables (SSL_CERT_FILE, AWS_CONFIG_FILE, ...) are paths their programs read. Left
# alone as well: rossflow's and Prefect's own path settings (TLS files, SSH key, known_hosts, the
# webhook's secret file with one secret per line).
set -eu

for var in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*_FILE\)=.*/\1/p'); do
  case "$var" in
    AWS_ACCESS_KEY_ID_FILE | AWS_SECRET_ACCESS_KEY_FILE | AWS_SESSION_TOKEN_FILE) ;;
    *_CA_FILE | *_CERT_FILE | *_KEY_FILE) continue ;;
    ROSSFLOW_WEBHOOK_SECRET_FILE | ROSSFLOW_SFTP_KNOWN_HOSTS_FILE) continue ;;
    PREFECT_* | ROSSFLOW_*) ;;
    *) continue ;;
  esac
  name=${var%_FILE}
  path="" already=""
  eval "path=\${$var}"
  eval "already=\${$name:-}"
  if [ -n "$already" ]; then
    echo "rossflow-entrypoint: both $name and $var are set; use one" >&2
    exit 64
  fi
  if [ ! -r "$path" ]; then
    echo "rossflow-entrypoint: $var=$path is not a readable file" >&2
    exit 66
  fi
  value=$(cat "$path")  # command substitution drops the trailing newline
  export "$name=$value"
  unset "$var"
done

exec "$@"
