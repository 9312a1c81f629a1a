#!/usr/bin/env bash
# One staging call on the GPU machine: keeps the carried onnxruntime-gpu part under /tmp/ortgpu (the
# machine stays warm 30 s between calls, and /tmp with it). With --start (the first call, which also
# carries .gpu/whl and .gpu/parts.sha256): installs the wheels into /tmp/site_py, snapshots the
# repository to /tmp/gpu_repo, starts scripts/gpu/prework.sh in its own session, and probes the GPU.
#   bash scripts/gpu/stage.sh PART [--start]
set -uo pipefail
part=${1:?usage: stage.sh PART [--start]}
work=${GPU_WORK:-/tmp/gpu_work}
mkdir -p /tmp/ortgpu "$work"
cp ".gpu/part$part" /tmp/ortgpu/ || { echo "no .gpu/part$part here: carry it in this call"; exit 2; }
[[ -f .gpu/parts.sha256 ]] && cp .gpu/parts.sha256 /tmp/ortgpu/
ls -la /tmp/ortgpu
if [[ ${2:-} == --start ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site_py \
    .gpu/whl/*.whl || echo "WARNING: wheel install failed: the service stage will fail"
  rm -rf /tmp/gpu_repo && mkdir -p /tmp/gpu_repo
  tar --exclude=./.gpu --exclude=./.git -cf - . | tar -xf - -C /tmp/gpu_repo
  setsid nohup bash /tmp/gpu_repo/scripts/gpu/prework.sh >"$work/prework.log" 2>&1 </dev/null &
  echo $! >"$work/prework.pid"
  nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total,clocks.sm --format=csv,noheader
  python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))"
  nproc; df -h /tmp | tail -1
fi
echo "--- prework.log"; tail -4 "$work/prework.log" 2>/dev/null
