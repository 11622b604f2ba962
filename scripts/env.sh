# Sourced by the scripts that run the product: a stable SECRET_KEY when none is given.
DATA_DIR="${DATA_DIR:-var}"
mkdir -p "$DATA_DIR"
if [ -z "${SECRET_KEY:-}" ]; then
  if [ ! -s "$DATA_DIR/secret_key" ]; then
    (umask 077 && .venv/bin/python -c "import secrets; print(secrets.token_urlsafe(50))" > "$DATA_DIR/secret_key")
  fi
  SECRET_KEY="$(cat "$DATA_DIR/secret_key")"
  export SECRET_KEY
fi
