# LessIsMore Workbench for NVIDIA Jetson (JetPack / L4T, aarch64).
#
#   docker build --build-arg BASE_IMAGE=dustynv/l4t-pytorch:r36.4.0 -t lessismore .
#   docker run --runtime nvidia -p 8501:8501 -v $PWD/data:/app/data lessismore
#
# BASE_IMAGE must carry a CUDA build of PyTorch (and torchaudio) matching the JetPack release
# of the device: Jetson wheels come with the base image, not from PyPI, so the torch pins of
# requirements.txt are left out here. Pass another L4T PyTorch image for another JetPack.
ARG BASE_IMAGE=dustynv/l4t-pytorch:r36.4.0
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    LIM_HOME=/app/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends libsndfile1 ffmpeg \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
# Everything but torch/torchaudio, which the base image provides for this device.
RUN grep -vE '^(torch|torchaudio)==' requirements.txt > /tmp/requirements-jetson.txt \
    && python3 -m pip install -r /tmp/requirements-jetson.txt

COPY . .
# The project itself (pyproject.toml): the `lim` script and the built-in methods' entry points.
RUN python3 -m pip install --no-deps -e .

EXPOSE 8501
HEALTHCHECK CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health')"
# The demo is added at start (idempotent), so it lands in a mounted data folder too.
CMD ["sh", "-c", "python3 -m engine demo && exec python3 -m streamlit run app.py --server.address=0.0.0.0 --server.port=8501 --server.headless=true --browser.gatherUsageStats=false --server.fileWatcherType=none"]
