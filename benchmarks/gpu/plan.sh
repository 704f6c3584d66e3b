#!/usr/bin/env bash
# What one GPU lease measures (benchmarks/gpu/run.sh starts it; results under /tmp/out).
# PLAN is a comma list, run in its order:
#   research: issue 28's research study (methods x learning rates x seeds on the research speech
#     set) and seed 003's classification study beside it (no timings read from these);
#   generation: issue 31's goal 2 (benchmarks/generation_speed.py on the real whisper-base);
#   slots: issue 29's goal, the 24-cell slots study, 12 worker processes (LIM_SLOTS=auto, then 12)
#     against one run at a time (timings: nothing else runs meanwhile; each side cut at its
#     deadline and projected from its finished cells).
set -u
echo "plan ${PLAN:-research,slots} start $(date -u +%T) commit ${LIM_SOURCE_COMMIT:-?}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
research() {
  python3 -m benchmarks.research_study --data /tmp/kit/research-speech --home /tmp/rs-home --out /tmp/out/research \
    --methods qlora,ta-qlora,cmra,mma,qass,lora,qdora,qlora-all-linear --learning-rates "${RESEARCH_LRS:-1e-3,3e-3,1e-2}" --workers 12 &
  python3 -m benchmarks.classification_study --home /tmp/cls-home --out /tmp/out/cls --workers 3 \
    --learning-rates 1e-4,3e-4,1e-3 --seeds 1,2,3 &
  wait
  echo "research done $(date -u +%T)"
}
slots() {
  # auto first (why each run waits: the worker's "run N waits: ..." lines), then a fixed 12 (what
  # the device gives with every process training), then one run at a time.
  python3 -m benchmarks.slots_study --home /tmp/slots --out /tmp/out/slots --sides processes:12 \
    --deadline-s "${AUTO_DEADLINE_S:-120}"
  echo "slots auto done $(date -u +%T)"; grep -a "waits" /tmp/out/slots/log.txt | sed -E "s/run [0-9]+/run N/" | sort | uniq -c | head -8
  if [ "${SLOTS_DEADLINE_S:-100}" != 0 ]; then  # 0: a short lease skips the fixed side
    python3 -m benchmarks.slots_study --home /tmp/slots --out /tmp/out/slots --sides processes:12:fixed \
      --deadline-s "${SLOTS_DEADLINE_S:-100}"
    echo "slots fixed done $(date -u +%T)"
  fi
  if [ "${SEQUENTIAL_DEADLINE_S:-100}" != 0 ]; then  # 0: skipped too
    python3 -m benchmarks.slots_study --home /tmp/slots --out /tmp/out/slots --sides sequential \
      --deadline-s "${SEQUENTIAL_DEADLINE_S:-100}"
    echo "slots sequential done $(date -u +%T)"
  fi
}
generation() {  # issue 31 goal 2: the recipe's generate against evaluation's decoding (both caches)
  python3 -m benchmarks.generation_speed --home /tmp/gen-home --clips 400 --batch 16 --device cuda \
    --json /tmp/out/generation.json
  echo "generation done $(date -u +%T)"
}
for part in $(echo "${PLAN:-research,slots}" | tr , " "); do
  case "$part" in research) research ;; slots) slots ;; generation) generation ;; *) echo "unknown plan part $part" ;; esac
done
echo "plan end $(date -u +%T)"
