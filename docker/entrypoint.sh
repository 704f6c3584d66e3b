#!/bin/sh
# The images' entry point (Dockerfile): self-test, demo, then the app or the given command.
#   docker run ... IMAGE                                  -> the app on port 8501
#   docker run ... IMAGE python3 -m engine train ...      -> that command (after the self-test)
# LIM_SELFTEST=off skips the self-test (e.g. to run `python3 -m engine profiles list` without a GPU).
set -e
if [ "${LIM_SELFTEST:-on}" != off ]; then
    # One 4-bit matmul on the GPU: stops here, with what to do, when QLoRA's kernels cannot run.
    python3 -m engine selftest --require-gpu
fi
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
python3 -m engine demo  # idempotent, so it lands in a mounted data volume too
exec python3 -m streamlit run server.py --server.address=0.0.0.0 --server.port=8501 \
    --server.headless=true --browser.gatherUsageStats=false --server.fileWatcherType=none
