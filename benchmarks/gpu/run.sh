#!/usr/bin/env bash
# On the lent GPU machine, once per device call, back to back (it stays warm 30 s between calls):
#   carry [".gpu/c1"] command "bash benchmarks/gpu/run.sh" ... carry [".gpu/cN"] the same,
#   then calls without carry until plan.sh has ended.
# Each call moves its kit part aside (a carried folder replaces .gpu there), puts the kit together
# once every part is there, starts benchmarks/gpu/plan.sh in the background (setsid: it outlives
# the call while the machine stays warm), waits up to WAIT_S and returns what has come out.
# PLAN (plan.sh: a comma list of research and slots) and SOURCE_COMMIT (set them in the call): the commit this tree is, recorded in every run's provenance
# (the copy here carries no history of its own).
set -u
cd "$(dirname "$0")/../.."
mkdir -p /tmp/kitparts
mv .gpu/*/lim-kit.part.* .gpu/*/kit.sha256 /tmp/kitparts/ 2>/dev/null
ls /tmp/kitparts
if [ ! -d /tmp/kit ]; then
  [ -f /tmp/kitparts/kit.sha256 ] || { echo "waiting for the kit's last part"; exit 0; }
  cat $(ls /tmp/kitparts/lim-kit.part.* | sort -V) > /tmp/kit.tar
  echo "$(cat /tmp/kitparts/kit.sha256)  /tmp/kit.tar" | sha256sum -c - || { echo "kit incomplete"; exit 0; }
  mkdir -p /tmp/kit && tar xf /tmp/kit.tar -C /tmp/kit && rm /tmp/kit.tar
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    /tmp/kit/deps/*.whl /tmp/kit/model/*.whl 2>&1 | tail -3
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 LIM_SOURCE_COMMIT=${SOURCE_COMMIT:-}
if [ ! -f /tmp/plan.pid ]; then
  rm -rf /tmp/repo && cp -a . /tmp/repo && rm -rf /tmp/repo/.gpu  # later calls re-copy this tree
  (cd /tmp/repo && python3 -c "import peft, bitsandbytes, sqlite_utils, argon2, jiwer, soundfile; print('imports ok')") || exit 4
  (cd /tmp/repo && PLAN=${PLAN:-research,slots} setsid nohup bash benchmarks/gpu/plan.sh > /tmp/plan.log 2>&1 & echo $! > /tmp/plan.pid)
fi
end=$(( $(date +%s) + ${WAIT_S:-540} ))
while kill -0 "$(cat /tmp/plan.pid)" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 10; done
kill -0 "$(cat /tmp/plan.pid)" 2>/dev/null && echo "plan still running" || echo "plan ended"
nvidia-smi --query-gpu=name,memory.used,utilization.gpu --format=csv
# The research study so far (both readings), should the lease end before it does: the last
# call's results are all that comes back.
if [ -f /tmp/rs-home/workbench.db ] && [ ! -f /tmp/out/research/study-tuned.json ]; then
  for reading in tuned cells; do
    (cd /tmp/repo && LIM_HOME=/tmp/rs-home LIM_AUTH=off timeout 120 python3 -m engine study show 1 --json \
      --reading $reading > /tmp/out/research/partial-study-$reading.json 2>/dev/null)
  done
fi
tail -25 /tmp/plan.log
cat /tmp/out/slots/summary.md /tmp/out/cls/summary.md 2>/dev/null; grep -a -c "run completed" /tmp/rs-home/*.log 2>/dev/null | tail -1
tar czf "$OUT/results.tgz" -C /tmp out 2>/dev/null
cp /tmp/plan.log "$OUT"/ 2>/dev/null || true
