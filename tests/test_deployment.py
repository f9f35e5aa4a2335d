"""The deployment files agree with the code: the compose file reserves a GPU and keeps the
database and the model cache in separate volumes, .env.example names only real settings, the
image installs its dependencies before it copies the code, and the pinned versions satisfy
pyproject's ranges. (Building the image needs Docker and a network; these checks need neither.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from bot.settings import ENV_NAMES

REPO = Path(__file__).resolve().parents[1]
# Read by docker-compose.yml itself (build argument), not by the bot.
COMPOSE_ONLY = {"TORCH_CUDA"}


def dockerfile_lines() -> list[str]:
    return (REPO / "Dockerfile").read_text().splitlines()


def test_compose_reserves_a_gpu_and_keeps_data_and_cache_apart() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    bot = compose["services"]["bot"]
    devices = bot["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in bot["volumes"]}
    assert mounts["/data"] != mounts["/cache"]
    assert {mounts["/data"], mounts["/cache"]} <= set(compose["volumes"])
    assert bot["env_file"] == ".env"
    assert bot["init"] is True  # the bot is not PID 1, which would ignore an early SIGTERM
    assert bot["build"]["args"]["TORCH_CUDA"].startswith("${TORCH_CUDA")


def test_env_example_names_only_settings_the_bot_reads_and_no_real_token() -> None:
    names = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            names[key.strip()] = value.strip()
    unknown = set(names) - set(ENV_NAMES) - COMPOSE_ONLY
    assert not unknown, f".env.example names settings the bot does not have: {unknown}"
    assert "DISCORD_TOKEN" in names
    # A placeholder, not something shaped like a real token (three dot-separated parts).
    assert not re.fullmatch(r"[\w-]{20,}\.[\w-]{5,}\.[\w-]{20,}", names["DISCORD_TOKEN"])


def test_image_paths_match_the_compose_volumes() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r'^VOLUME \["/data", "/cache"\]', text, re.M)
    for setting in ("IMAGINE_DB=/data/", "IMAGINE_OUTPUT_DIR=/data/", "IMAGINE_CACHE_DIR=/cache/"):
        assert setting in text
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"python\", \"-m\", \"bot.health\"\]", text, re.M)
    assert "IMAGINE_HEALTH_FILE=" in text


def test_dependencies_are_installed_before_the_code_and_the_readme_are_copied() -> None:
    lines = dockerfile_lines()
    copies = [(i, line) for i, line in enumerate(lines) if line.startswith("COPY ")]
    first = copies[0][1].split()[1:-1]
    assert first == ["pyproject.toml", "constraints.txt"], first
    install = next(i for i, line in enumerate(lines) if "'.[ray]'" in line)
    later = [line for i, line in copies if i > install]
    assert any("README.md" in line for line in later)
    assert any(line.startswith("COPY bot") for line in later)
    assert "-c constraints.txt" in lines[install]


def test_constraints_pin_versions_inside_pyprojects_ranges() -> None:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "clip-imagine" not in pins
    wanted = project["dependencies"] + project["optional-dependencies"]["ray"]
    for text in wanted:
        requirement = Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"constraints.txt does not pin {requirement.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={pins[name]}, outside {requirement}"
        )
