# The bot with its GPU worker: `docker build -t clip-imagine .` then
#   docker run --gpus all -e DISCORD_TOKEN=... -v imagine-data:/data clip-imagine
# See README (Running with Docker) for the models file and the other settings.

# The base and torch must agree on the CUDA major version. pip installs torch from PyPI, whose
# Linux wheels are CUDA 13 builds (cu130) that bring their own CUDA libraries (the nvidia-*-cu13
# packages); what they need from the host is a driver for CUDA 13 (580 or newer) and a GPU of
# compute capability 7.5 or newer. So the base is CUDA 13 too, and only its small "base"
# flavour: it sets NVIDIA_REQUIRE_CUDA=cuda>=13.0, so the NVIDIA container toolkit refuses to
# start the container on a too-old driver with a clear message, instead of torch silently
# finding no GPU. (The alternative, a cu126 torch from PyTorch's own index on a CUDA 12.6 base,
# would run on older drivers and GPUs but would not be the torch CI and the tests use.)
# Ubuntu 24.04's python3 is 3.12 (the project needs 3.11 or newer).
FROM nvidia/cuda:13.0.0-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu's Python is "externally managed": the bot gets its own virtual environment.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app

# Dependencies first, in their own layer: torch and friends are gigabytes and change rarely.
# Empty packages stand in for the code so that `pip install .` resolves only the dependencies.
COPY pyproject.toml README.md ./
RUN mkdir -p bot generation db \
    && touch bot/__init__.py generation/__init__.py db/__init__.py \
    && pip install . \
    && pip uninstall -y clip-imagine \
    && rm -rf bot generation db

# Fail the build, not the first start, if a torch release ever stops being a CUDA 13 build
# (then change the base above to match torch.version.cuda).
RUN python -c "import sys, torch; v = torch.version.cuda or 'none'; \
sys.exit(0 if v.startswith('13.') else f'torch is built for CUDA {v}; the base image is CUDA 13')"

# Then the code (tests and benchmarks stay out of the image).
COPY bot ./bot
COPY generation ./generation
COPY db ./db
RUN pip install --no-deps . && rm -rf build

# An unprivileged user owns the data volume: the SQLite database, the pictures, the inputs
# people upload, and the model weights cache (downloaded once, kept across restarts).
RUN useradd --create-home --uid 10001 --user-group imagine \
    && mkdir -p /data \
    && chown imagine:imagine /data
USER imagine

ENV IMAGINE_DB=/data/imagine.db \
    IMAGINE_OUTPUT_DIR=/data/outputs \
    XDG_CACHE_HOME=/data/cache \
    IMAGINE_CACHE_DIR=/data/cache/clip-imagine \
    HF_HOME=/data/cache/huggingface \
    TORCH_HOME=/data/cache/torch
VOLUME ["/data"]

# DISCORD_TOKEN comes from the environment at run time; it is never baked into the image.
CMD ["python", "-m", "bot"]
