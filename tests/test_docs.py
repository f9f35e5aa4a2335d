"""The documentation keeps up with the code: every setting is on the configuration page, the
README's commands are the ones CI runs, and its links point at files in the repository.
(`mkdocs build --strict` in CI checks the links between the pages in docs/.)"""

from __future__ import annotations

import re
from pathlib import Path

from bot.settings import ENV_NAMES

REPO = Path(__file__).resolve().parents[1]


def test_every_setting_is_on_the_configuration_page() -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    missing = [env for env in ENV_NAMES if f"`{env}`" not in page]
    assert not missing, f"docs/configuration.md does not describe {missing}"
    keys = [name for name in ENV_NAMES.values() if f"`{name}`" not in page]
    assert not keys, f"docs/configuration.md does not give the TOML key of {keys}"


def ci_block(marker: str) -> list[str]:
    """The commands between `# --- README: <marker> ---` and `# --- end ---` in .ci/run."""
    text = (REPO / ".ci" / "run").read_text()
    block = text.split(f"# --- README: {marker} ---\n", 1)[1].split("# --- end ---", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_the_readme_gives_the_commands_ci_runs() -> None:
    readme = (REPO / "README.md").read_text()
    # CI spells the first command as separate steps (and upgrades pip in between).
    assert "python3 -m venv .venv && .venv/bin/pip install -e '.[dev,ray]'" in readme
    assert ".venv/bin/pip install -e '.[dev,ray]'" in ci_block("install")
    assert ci_block("test") == [".venv/bin/python -m pytest"]
    assert "\n.venv/bin/python -m pytest\n" in readme


def test_the_readme_is_short_and_its_links_resolve() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link.split("#", 1)[0] for link in links if not re.match(r"[a-z]+:", link)]
    assert local, "the README links to no page of the documentation"
    missing = [link for link in local if link and not (REPO / link).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"
    assert "../shared" not in readme


def test_the_flow_picture_is_a_real_png() -> None:
    data = (REPO / "docs" / "assets" / "discord-flow.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
