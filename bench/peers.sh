#!/usr/bin/env bash
# Installs the peers that bench/run.py compares queuectl with (Debian, as root):
#   task-spooler (tsp), nq, redis-server from Debian's packages;
#   rq and huey from PyPI into bench/.peers-venv, kept apart from the project's .venv.
# Usage: bash bench/peers.sh        (then: .venv/bin/python bench/run.py)
set -euo pipefail
cd "$(dirname "$0")"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q task-spooler nq redis-server

# The Debian package starts a Redis on 6379; the benchmark never uses it (it starts its own).
PYTHON="${PYTHON:-python3}"
if [ ! -x .peers-venv/bin/python ]; then
    "$PYTHON" -m venv .peers-venv
fi
.peers-venv/bin/pip install -q --upgrade pip
.peers-venv/bin/pip install -q rq huey redis

echo "peers installed:"
command -v tsp ts nq redis-server || true
.peers-venv/bin/python -c "import rq, huey, redis; print('rq', rq.__version__, '| huey', huey.__version__, '| redis-py', redis.__version__)"
