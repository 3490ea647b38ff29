#!/usr/bin/env bash
# Install spritesafe into ./.venv on a fresh machine (Debian, Python 3.11+). Idempotent: a
# second run only checks. Usage: scripts/install.sh [--dev]
#   --dev   also the test tools (pytest, ruff, mypy, ...), Debian's Chromium (browser tests)
#           and PostgreSQL (catalog tests), and the web bundle's npm packages (export/web)
# Real pixel art for the default sources and the tests comes from Debian packages (SFW, free
# licences; never committed). Nothing is downloaded from a model hub.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="train"
debs=(cataclysm-dda-data crawl-tiles-data)
for arg in "$@"; do
  case "$arg" in
    --dev) extras="train,dev"; debs+=(chromium postgresql) ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: ${missing[*]} not installed (needs root + apt); default sources and tests need them" >&2
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.spritesafe-install-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-$extras"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  # torch first, pinned: the CPU wheel here; anything unpinned pulls several GB of CUDA.
  .venv/bin/python -m pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import corpus, flows, spritesafe.cli" # fail here, not later, if it did not install
  rm -f .venv/.spritesafe-install-*
  touch "$stamp"
fi
if [ "$extras" = "train,dev" ]; then
  # The browser bundle's runtime and its test/bench tools, pinned by package-lock.json.
  lock="export/web/node_modules/.spritesafe-$(sha256sum export/web/package-lock.json | cut -c1-16)"
  if [ ! -f "$lock" ]; then
    (cd export/web && npm ci --no-audit --no-fund --loglevel=error)
    touch "$lock"
  fi
fi
echo "spritesafe installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
