# Grand Challenge algorithm container: DRAC2022 Task 1 lesion segmentation on UW-OCTA.
#
#   ./build.sh                         # online, from python:3.11-slim-bookworm
#   ./build.sh --offline --base drac-algo-base:bookworm   # no registry, wheels from ./wheels
#
# Needs BuildKit (RUN --mount); build.sh finds a client that has it. There is deliberately no
# syntax directive line at the top: it would make BuildKit pull the docker/dockerfile frontend
# image from a registry, and the built-in frontend of Docker >= 20.10 already knows RUN --mount.
#
# The model weights are not part of the image: Grand Challenge extracts the uploaded model.tar.gz
# to /opt/ml/model. BUNDLE (a folder in the build context holding manifest.json) bakes a bundle in
# at that path for self-contained local use.

# python:3.11 on Debian bookworm: the torch wheel from PyPI brings its own CUDA libraries
# (nvidia-* wheels), so this runs on the GPU under `--gpus all` without a CUDA base image.
ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG PIP_OFFLINE=0
ARG BUNDLE=

# Stages that only feed bind mounts and copies. BuildKit skips the ones the build does not reach,
# so ./wheels and the bundle folder need to exist only when they are asked for.
FROM scratch AS wheels-0
FROM scratch AS wheels-1
COPY wheels/ /
FROM wheels-${PIP_OFFLINE} AS wheels

FROM scratch AS model
FROM scratch AS model-baked
ARG BUNDLE
COPY ${BUNDLE}/ /
FROM model${BUNDLE:+-baked} AS model-src

FROM --platform=linux/amd64 ${BASE_IMAGE} AS algorithm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NO_ALBUMENTATIONS_UPDATE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    TORCH_HOME=/tmp/torch \
    HF_HOME=/tmp/huggingface

RUN groupadd -r user && useradd -m --no-log-init -r -g user user

WORKDIR /opt/app

# The venv belongs to root: the algorithm can read and run it but never change it.
# The optional pip-cert secret (build.sh passes $PIP_CERT) lets pip trust a TLS-intercepting
# proxy during the build without the certificate ending up in the image.
COPY requirements-inference.txt /opt/app/requirements-inference.txt
ARG PIP_OFFLINE
# torch's dependencies that inference never loads, removed after the install (1.0 GB; 0.43 GB of
# the compressed image), each decided without a GPU (README "The container", "Image size"):
# - triton: the compiler behind torch.compile, which this project never calls.
# - nvidia-cusolver-cu12: dense linear algebra (torch.linalg on CUDA), loaded by torch only
#   through libtorch_cuda_linalg.so on the first such call; not among the libraries torch links
#   at import (readelf -d); torch's own preload of the CUDA libraries skips what is missing.
# test.sh checks that the image lacks them and that inference runs and matches its expected
# outputs without them. `pip check` in the image names them as missing requirements of torch.
ARG LEAVE_OUT="triton nvidia-cusolver-cu12"
RUN --mount=type=bind,from=wheels,target=/wheels \
    --mount=type=secret,id=pip-cert \
    python3 -m venv /opt/venv \
    && if [ -s /run/secrets/pip-cert ]; then export PIP_CERT=/run/secrets/pip-cert; fi \
    && if [ "$PIP_OFFLINE" = 1 ]; then set -- --no-index --find-links /wheels; else set --; fi \
    && /opt/venv/bin/pip install --no-cache-dir --no-color --disable-pip-version-check "$@" \
        --requirement /opt/app/requirements-inference.txt \
    && if [ -n "$LEAVE_OUT" ]; then \
        /opt/venv/bin/pip uninstall --yes --no-color --disable-pip-version-check $LEAVE_OUT; fi

COPY --from=model-src / /opt/ml/model/
COPY drac_algo/ /opt/app/drac_algo/
COPY process.py /opt/app/process.py

USER user

ENTRYPOINT ["python", "-m", "process"]
