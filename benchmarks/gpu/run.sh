#!/usr/bin/env bash
# On the GPU machine: put the kit together, install its wheels, start the research study in the
# background (setsid: it outlives this call while the machine stays warm), wait, copy results.
set -u
cd "$(git rev-parse --show-toplevel 2>/dev/null || echo "$(dirname "$0")/../..")"
if [ ! -d /tmp/kit ]; then
  cat $(ls .gpu/c*/lim-kit.part.* | sort -V) > /tmp/kit.tar
  echo "$(cat .gpu/c*/kit.sha256 | head -1)  /tmp/kit.tar" | sha256sum -c - || exit 3
  mkdir -p /tmp/kit && tar xf /tmp/kit.tar -C /tmp/kit && rm /tmp/kit.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    /tmp/kit/deps/*.whl /tmp/kit/model/*.whl 2>&1 | tail -3
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2
python3 -c "import peft, bitsandbytes, sqlite_utils, argon2, jiwer, soundfile; print('imports ok')" || exit 4
METHODS=qlora,ta-qlora,cmra,mma,lora,qdora,qlora-all-linear
python3 -c "import librosa" 2>/dev/null && METHODS=$METHODS,qass
echo "methods: $METHODS"
if [ ! -f /tmp/study.pid ]; then
  setsid nohup python3 -m benchmarks.research_study --data /tmp/kit/research-speech --home /tmp/rs-home \
    --out /tmp/rs-out --methods $METHODS --workers ${WORKERS:-8} > /tmp/rs-out.log 2>&1 &
  echo $! > /tmp/study.pid
fi
end=$(( $(date +%s) + ${WAIT_S:-540} ))
while kill -0 "$(cat /tmp/study.pid)" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 15; done
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
tail -5 /tmp/rs-out.log; tail -3 /tmp/rs-out/log.txt 2>/dev/null
LIM_HOME=/tmp/rs-home python3 -m engine runs list --json 2>/dev/null | python3 -c "
import json, sys, collections; runs = json.load(sys.stdin); print(collections.Counter(r['status'] for r in runs))" || true
cp /tmp/rs-out/*.json /tmp/rs-out/log.txt /tmp/rs-out.log "$OUT"/ 2>/dev/null || true
