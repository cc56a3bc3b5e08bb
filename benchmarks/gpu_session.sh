#!/usr/bin/env bash
# The GPU benchmark of issue 3: the records and cnnkit on the same data, on the same card, in one call.
#
#   bash benchmarks/gpu_session.sh pack    # here: fills the ignored .devdata/ (data + the records' scripts)
#   bash benchmarks/gpu_session.sh cifar   # there, through the device tool with carry [".devdata"], 600 s
#   bash benchmarks/gpu_session.sh mnist   # there, in a second call (same carry)
#   bash benchmarks/gpu_session.sh throughput   # there: training images/s at batch 256 .. 4096 on one GPU (issue 12)
#
# pack needs ../shared/data and the two record repositories fetched into /work/.mirror (the `fetch` tool:
# github:hiverge/cifar10-speedrun and github:KellerJordan/cifar10-airbench). Their scripts are only
# carried to the device, with the number of runs cut down, never added to the project.
# cifar and mnist write every log to $OUT and print a summary last; each part has its own time limit, so
# one that hangs cannot take the others' time (max-autotune compilation makes the records slow to start).
set -euo pipefail
cd "$(dirname "$0")/.."

pack() {
  local shared=${SHARED:-../shared/data} mirror=${MIRROR:-/work/.mirror}
  mkdir -p .devdata
  tar -czf .devdata/cifar10-jpeg.tar.gz -C "$shared" cifar10-jpeg  # 20 MB: gzip shares the JPEG headers
  tar -czf .devdata/mnist.tar.gz -C "$shared" MNIST
  git --git-dir="$mirror/hiverge+cifar10-speedrun/repo" show HEAD:cifar10_speedrun.py \
    | sed 's/range(200)/range(8)/' > .devdata/cifar10_speedrun.py  # 8 runs, as the issue's figure
  git --git-dir="$mirror/KellerJordan+cifar10-airbench/repo" show HEAD:airbench94_muon.py \
    | sed 's/range(200)/range(10)/' > .devdata/airbench94_muon.py  # 10 runs, as the issue's figure
  du -sh .devdata
}

unpack() {
  export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 CNNKIT_CACHE=/tmp/cnnkit-cache
  out=${OUT:-/tmp/out} data=/tmp/data
  mkdir -p "$out" "$data"
  nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv | tee "$out/gpu.txt" || true
  tar -xzf ".devdata/$1.tar.gz" -C "$data"
}

cifar() {
  unpack cifar10-jpeg
  mkdir -p /tmp/records
  python3 benchmarks/records_data.py "$data/cifar10-jpeg" /tmp/records/cifar10 | tee "$out/records_data.txt"
  (cd /tmp/records && timeout 180 python3 "$OLDPWD/.devdata/cifar10_speedrun.py") > "$out/hiverge.log" 2>&1 || true
  (cd /tmp/records && timeout 160 python3 "$OLDPWD/.devdata/airbench94_muon.py") > "$out/airbench.log" 2>&1 || true
  timeout 200 python3 benchmarks/gpu.py cifar --data "$data" --runs 5 --compile > "$out/cnnkit_cifar.log" 2>&1 || true
  echo "== hiverge cifar10_speedrun (8 runs)"; grep -E "Accuracies|Times" "$out/hiverge.log" || tail -5 "$out/hiverge.log"
  echo "== airbench94_muon (10 runs)"; grep -E "^Mean" "$out/airbench.log" || tail -5 "$out/airbench.log"
  echo "== cnnkit cifar10-fast"; tail -7 "$out/cnnkit_cifar.log"
}

mnist() {
  unpack mnist
  timeout 300 python3 benchmarks/gpu.py mnist --data "$data" 2>&1 | tee "$out/cnnkit_mnist.log"
}

throughput() {
  unpack cifar10-jpeg
  timeout 500 python3 benchmarks/throughput.py --data "$data/cifar10-jpeg" 2>&1 | tee "$out/throughput.log" | grep "^batch"
}

"${1:?usage: gpu_session.sh pack|cifar|mnist|throughput}"
