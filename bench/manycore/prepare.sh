# Sourced by the many-core scripts (bench/manycore/*-scaling.sh): from the repository root, the results
# folder ($OUT, which the device tool brings back, or bench/results/manycore/) in $out, the wheels the
# machine lacks (.whl/, bench/manycore/fetch.sh) installed into /tmp/site and on PYTHONPATH, and the
# machine's facts in $out/machine.txt.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${OUT:-bench/results/manycore}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
{ nproc; python3 --version; lscpu | grep -E 'Model name|^CPU\(s\)'; } | tee "$out/machine.txt"
