# The bot with its GPU worker. With Docker Compose: `docker compose up -d` (docker-compose.yml,
# .env.example). By hand:
#   docker build -t clip-imagine .
#   docker run --gpus all --init --env-file .env -v imagine-data:/data -v imagine-cache:/cache clip-imagine
# docs/self-hosting.md has the details, the GPU/driver table and the troubleshooting.
#
# Two torch builds, chosen with --build-arg TORCH_CUDA=...:
#   cu130 (default): torch from PyPI, a CUDA 13 build that brings its own CUDA libraries. Needs
#         an NVIDIA driver of the 580 branch or newer and a GPU of compute capability 7.5 or
#         newer (Turing: T4, RTX 20xx, and later).
#   cu126: torch from PyTorch's CUDA 12.6 index, for older drivers (525 or newer) and older GPUs
#         (Pascal: P100, GTX 10xx; Volta: V100; and everything newer).
# The base image's CUDA major version must match torch's; the build checks it.
ARG TORCH_CUDA=cu130

FROM nvidia/cuda:13.0.0-base-ubuntu24.04 AS base-cu130
# The NVIDIA container toolkit refuses to start the container on a driver too old for CUDA 13,
# with a clear message, instead of torch silently finding no GPU.
ENV NVIDIA_REQUIRE_CUDA="cuda>=13.0" \
    TORCH_INDEX_URL=""

FROM nvidia/cuda:12.6.3-base-ubuntu24.04 AS base-cu126
# CUDA 12 minor-version compatibility: torch's CUDA 12.6 libraries run on any CUDA 12 driver.
ENV NVIDIA_REQUIRE_CUDA="cuda>=12.0" \
    TORCH_INDEX_URL="https://download.pytorch.org/whl/cu126"

FROM base-${TORCH_CUDA} AS runtime
ARG TORCH_CUDA

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Ubuntu 24.04's python3 is 3.12 (the project needs 3.11 or newer).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Ubuntu's Python is "externally managed": the bot gets its own virtual environment.
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /app

# Dependencies first, in their own layer: torch and friends are gigabytes and change rarely.
# Only pyproject.toml and the pinned versions go in, so editing the code or the README does
# not reinstall them. For cu126, torch and torchvision (the pinned versions) come from
# PyTorch's index without their dependencies; the next pip install adds those from PyPI. Empty packages (and an empty README, which pyproject names) stand in for
# the code so that pip resolves only the dependencies, the `ray` extra included.
COPY pyproject.toml constraints.txt ./
RUN mkdir -p bot generation db \
    && touch bot/__init__.py generation/__init__.py db/__init__.py README.md \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
         pip install --no-deps -c constraints.txt torch torchvision --index-url "$TORCH_INDEX_URL"; \
       fi \
    && pip install -c constraints.txt '.[ray]' \
    && pip uninstall -y clip-imagine \
    && rm -rf bot generation db README.md build *.egg-info

# Fail the build, not the first start, if torch and the base image disagree on CUDA.
RUN python -c "import sys, torch; want = '${TORCH_CUDA}'[2:4]; v = torch.version.cuda or 'none'; \
sys.exit(0 if v.startswith(want + '.') else f'torch is built for CUDA {v}; this image is CUDA {want}')"

# Then the code (tests and benchmarks stay out of the image).
COPY README.md ./
COPY bot ./bot
COPY generation ./generation
COPY db ./db
RUN pip install --no-deps . && rm -rf build *.egg-info

# An unprivileged user owns the two volumes: /data (the SQLite database, the pictures, the
# images people upload; back it up) and /cache (model weights, downloaded once; can be
# rebuilt by downloading again).
RUN useradd --create-home --uid 10001 --user-group imagine \
    && mkdir -p /data /cache \
    && chown imagine:imagine /data /cache
USER imagine

ENV IMAGINE_DB=/data/imagine.db \
    IMAGINE_OUTPUT_DIR=/data/outputs \
    IMAGINE_HEALTH_FILE=/tmp/clip-imagine.health \
    XDG_CACHE_HOME=/cache \
    IMAGINE_CACHE_DIR=/cache/clip-imagine \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch
VOLUME ["/data", "/cache"]

# The bot rewrites its heartbeat file every 10 s; `python -m bot.health` reads it (no network,
# no torch). Loading models (a first download included) counts as healthy; a stuck event loop
# or five minutes away from Discord does not.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-m", "bot.health"]

# DISCORD_TOKEN comes from the environment at run time; it is never baked into the image.
# The bot handles SIGTERM itself (docker stop), from its first second: it stops the picture at
# the end of the current step and exits; that job resumes at the next start.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "bot"]
