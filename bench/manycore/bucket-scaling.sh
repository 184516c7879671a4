#!/usr/bin/env bash
# Issue 11's many-core run, as one prepared script for a lent machine with many cores (16 here): one hot
# SKU split into B = 1, 2, 4, 8 stock buckets (`flashsale bench hot-sku-buckets`) on a Redis Cluster of 4
# masters, from 8 client processes, each master's CPU measured; the target is B = 4 at >= 3x the B = 1
# rate. The machine has no network: the wheels flashsale needs beyond what it already has travel in .whl/
# (bench/manycore/fetch.sh prepares them). Results go to $OUT (the device tool brings them back) or
# bench/results/manycore/.
source "$(dirname "$0")/prepare.sh"
python3 -m flashsale.bench hot-sku-buckets \
  --redis-cluster 4 --buckets 1,2,4,8 --client-processes 8 --units 50000 \
  --no-plots --results-dir "$out/buckets" 2>&1 | tee "$out/run-buckets.log"
