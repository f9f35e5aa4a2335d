# The bot with its GPU worker: `docker build -t clip-imagine .` then
#   docker run --gpus all -e DISCORD_TOKEN=... -v imagine-data:/data clip-imagine
# See README (Running with Docker) for the models file and the other settings.

# CUDA runtime on Ubuntu 24.04, whose python3 is 3.12 (the project needs 3.11 or newer).
FROM nvidia/cuda:12.6.3-runtime-ubuntu24.04

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
