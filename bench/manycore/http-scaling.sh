#!/usr/bin/env bash
# Issue 14's many-core run, as one prepared script for a lent machine with many cores (16 here):
# `flashsale bench http-scaling` with `flashsale serve --workers W` for W = 1, 2, 4, 8, 11 against one
# Redis, wrk -t4 -c256 (and -c1024 for W = 1, 8, 11, 14), every request a full reserve by a user of its
# own. The machine has no network: the wheels the API needs beyond what it has travel in .whl/ (cp312, manylinux), and Debian's wrk with its
# libluajit in .wrk/. Results go to $OUT (the device tool brings them back) or bench/results/manycore/.
source "$(dirname "$0")/prepare.sh"
export PATH=$PWD/.wrk:$PATH LD_LIBRARY_PATH=$PWD/.wrk
wrk --version | head -1 || true
# 256 connections (the issue's first measurement), then 1,024 for the larger W: at 256 the connections,
# not the servers, bound the rate once W passes 8 (a request's latency × the rate = the connections).
python3 -m flashsale.bench http-scaling \
  --api-workers 1 --api-workers 2 --api-workers 4 --api-workers 8 --api-workers 11 \
  --no-plots --results-dir "$out/c256" 2>&1 | tee "$out/http-run-c256.log"
python3 -m flashsale.bench http-scaling --connections 1024 \
  --api-workers 1 --api-workers 8 --api-workers 11 --api-workers 14 \
  --no-plots --results-dir "$out/c1024" 2>&1 | tee "$out/http-run-c1024.log"
