# syntax=docker/dockerfile:1
# GPU image for ootrain.
#
#   docker build -t ootrain .
#   docker run --gpus all -v "$PWD/out:/work" ootrain --help
#
# The *devel* CUDA image is used on purpose: KeOps compiles its kernels at run
# time with NVRTC and g++ and needs the CUDA headers, libnvrtc and the Python
# headers. PyTorch brings its own CUDA runtime libraries in its wheel.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

# PyTorch wheel index matching the CUDA major version of the image (12.x).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CUDA_HOME=/usr/local/cuda \
    KEOPS_CACHE_FOLDER=/opt/keops_cache \
    MPLBACKEND=Agg \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev build-essential ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv "$VIRTUAL_ENV" \
    && pip install --upgrade pip \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

# The project: metadata, the package and the pipelines (`ootrain demo` runs one).
WORKDIR /opt/ootrain
COPY pyproject.toml README.md ./
COPY ootrain ./ootrain
COPY pipelines ./pipelines
# The base dependencies include faiss-cpu, which ships the same `faiss` package
# as faiss-gpu-cu12: remove it and reinstall the GPU build over the shared files.
RUN pip install ".[gpu]" \
    && faiss_version="$(pip show faiss-gpu-cu12 | sed -n 's/^Version: //p')" \
    && pip uninstall -y faiss-cpu \
    && pip install --force-reinstall --no-deps "faiss-gpu-cu12==${faiss_version}" \
    && python -c "import faiss, torch, ootrain; print('faiss', faiss.__version__, 'torch', torch.__version__)"

# Unprivileged user; KeOps' compiled-kernel cache is writable by it (mount a
# volume on /opt/keops_cache to keep kernels across containers).
RUN useradd --create-home --uid 1000 ootrain \
    && mkdir -p "$KEOPS_CACHE_FOLDER" /work \
    && chown ootrain:ootrain "$KEOPS_CACHE_FOLDER" /work
USER ootrain
WORKDIR /work

ENTRYPOINT ["ootrain"]
CMD ["--help"]
