# Sourced by the scripts that run the product.
#
# settings.py reads .env itself; the few values these scripts and the Procfile's command
# lines use are read the same way (the real environment first, then .env) and exported,
# so the shell, daphne, the clusters and manage.py agree. Then a stable SECRET_KEY when
# neither gives one.
eval "$(.venv/bin/python -m imagegen_site.envfile DATA_DIR SECRET_KEY WEB_HOST WEB_PORT WEB_PROCESSES DATABASE_POOL_MAX_SIZE REDIS_URL)"
DATA_DIR="${DATA_DIR:-var}"
mkdir -p "$DATA_DIR"
if [ -z "${SECRET_KEY:-}" ]; then
  if [ ! -s "$DATA_DIR/secret_key" ]; then
    (umask 077 && .venv/bin/python -c "import secrets; print(secrets.token_urlsafe(50))" > "$DATA_DIR/secret_key")
  fi
  SECRET_KEY="$(cat "$DATA_DIR/secret_key")"
  export SECRET_KEY
fi
