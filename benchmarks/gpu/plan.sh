#!/usr/bin/env bash
# What one GPU lease measures, in order (benchmarks/gpu/run.sh starts it; results under /tmp/out):
# 1. issue 29's goal: the 24-cell slots study, 12 worker processes against one run at a time
#    (timings: nothing else runs meanwhile; each side cut at its deadline, projected from its cells);
# 2. issue 28: the research study (methods x learning rates x seeds on the research speech set)
#    and seed 003's classification study beside it (no timings are read from these);
# 3. the slots study's third side, the app's in-process worker (threads), if time is left.
set -u
echo "plan start $(date -u +%T) commit ${LIM_SOURCE_COMMIT:-?}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
METHODS=qlora,ta-qlora,cmra,mma,lora,qdora,qlora-all-linear
python3 -c "import librosa" 2>/dev/null && METHODS=$METHODS,qass
python3 -m benchmarks.slots_study --home /tmp/slots --out /tmp/out/slots --sides processes:12 --deadline-s 240
echo "slots processes done $(date -u +%T)"
python3 -m benchmarks.slots_study --home /tmp/slots --out /tmp/out/slots --sides sequential --deadline-s 240
echo "slots sequential done $(date -u +%T)"
python3 -m benchmarks.research_study --data /tmp/kit/research-speech --home /tmp/rs-home --out /tmp/out/research \
  --methods $METHODS --learning-rates 1e-3,3e-3,1e-2 --workers 12 &
python3 -m benchmarks.classification_study --home /tmp/cls-home --out /tmp/out/cls --workers 3 &
wait
echo "research and classification done $(date -u +%T)"
python3 -m benchmarks.slots_study --home /tmp/slots --out /tmp/out/slots --sides threads --deadline-s 150
echo "plan end $(date -u +%T)"
