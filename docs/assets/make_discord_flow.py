"""Draw docs/assets/discord-flow.png: the bot's reply while it paints and when it is done,
mocked up in Discord's dark theme around pictures the built-in tiny models really paint.

    .venv/bin/python docs/assets/make_discord_flow.py

It runs `python -m generation` with IMAGINE_MODELS=tiny (random weights: the pictures are
noise, as the caption says), then lays the texts out as bot/render.py writes them. Only PIL
here; torch runs in the subprocess.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "discord-flow.png"
FONTS = Path("/usr/share/fonts/truetype/dejavu")

PROMPT = "a lighthouse in a storm, oil painting"
SEED, STEPS, SIZE = 42, 30, 128

BG, EMBED_BG, TEXT, MUTED, WHITE = "#313338", "#2b2d31", "#dbdee1", "#949ba4", "#f2f3f5"
AMBER, GREEN, BLURPLE, GREY_BUTTON = "#f0b232", "#23a55a", "#5865f2", "#4e5058"


def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = FONTS / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    return ImageFont.truetype(str(path), size) if path.exists() else ImageFont.load_default()


def paint(folder: Path) -> tuple[Image.Image, Image.Image, float]:
    """A progress frame (step 10), the final picture, and the seconds the run printed."""
    out = folder / "out.png"
    env = dict(os.environ, IMAGINE_MODELS="tiny")
    run = subprocess.run(
        [sys.executable, "-m", "generation", PROMPT, "-o", str(out), "--seed", str(SEED),
         "--steps", str(STEPS), "--size", str(SIZE), "--save-every", "10", "-q"],
        cwd=REPO, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    took = re.search(r"(\d+) steps in ([\d.]+) s", run.stdout + run.stderr)
    assert took is not None, run.stdout + run.stderr
    frame = Image.open(folder / "out-0010.png").convert("RGB")
    return frame, Image.open(out).convert("RGB"), float(took.group(2))


def button(draw: ImageDraw.ImageDraw, x: int, y: int, label: str, colour: str) -> int:
    width = int(draw.textlength(label, font=font(14))) + 28
    draw.rounded_rectangle((x, y, x + width, y + 32), radius=4, fill=colour)
    draw.text((x + 14, y + 8), label, fill=WHITE, font=font(14))
    return x + width + 8


def message(
    picture: Image.Image,
    content: str,
    title: str,
    fields: list[tuple[str, str]],
    colour: str,
    buttons: list[tuple[str, str]],
    footer: str | None,
) -> Image.Image:
    """One message of the bot, as Discord's dark theme draws it (roughly)."""
    panel = Image.new("RGB", (470, 610), BG)
    draw = ImageDraw.Draw(panel)
    draw.text((72, 14), "Ada used /imagine", fill=MUTED, font=font(13))
    draw.ellipse((16, 36, 56, 76), fill=BLURPLE)
    draw.text((27, 45), "CI", fill=WHITE, font=font(16, bold=True))
    draw.text((72, 36), "clip-imagine", fill=WHITE, font=font(16, bold=True))
    badge = 72 + int(draw.textlength("clip-imagine", font=font(16, bold=True))) + 6
    draw.rounded_rectangle((badge, 39, badge + 35, 55), radius=3, fill=BLURPLE)
    draw.text((badge + 5, 40), "APP", fill=WHITE, font=font(11, bold=True))
    draw.text((72, 60), content, fill=TEXT, font=font(14))
    top, left, right = 88, 72, 452
    bottom = top + 420 + (22 if footer else 0)
    draw.rounded_rectangle((left, top, right, bottom), radius=4, fill=EMBED_BG)
    draw.rectangle((left, top, left + 4, bottom), fill=colour)
    draw.text((left + 16, top + 12), title, fill=WHITE, font=font(15, bold=True))
    draw.text((left + 16, top + 36), PROMPT, fill=TEXT, font=font(13))
    for i, (name, value) in enumerate(fields):
        x, y = left + 16 + (i % 3) * 118, top + 62 + (i // 3) * 40
        draw.text((x, y), name, fill=WHITE, font=font(12, bold=True))
        draw.text((x, y + 17), value, fill=TEXT, font=font(12))
    shown = picture.resize((256, 256), Image.Resampling.NEAREST)
    panel.paste(shown, (left + 16, top + 148))
    if footer:
        draw.text((left + 16, bottom - 26), footer, fill=MUTED, font=font(12))
    x = left
    for label, colour_ in buttons:
        x = button(draw, x, bottom + 12, label, colour_)
    return panel


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        frame, final, seconds = paint(Path(folder))
    common = [("Seed", str(SEED)), ("Steps", str(STEPS)), ("Generator", "vqgan")]
    painting = message(
        frame,
        f"Painting: step 10/{STEPS} ({100 * 10 // STEPS}%), "
        f"about {seconds * (STEPS - 10) / STEPS:.0f} s left.",
        "Picture #7",
        [*common, ("Size", f"{SIZE}×{SIZE}")],
        AMBER,
        [("✖ Cancel", "#da373c")],
        None,
    )
    finished = message(
        final,
        "@Ada your picture is ready.",
        "Picture #7",
        [*common, ("Size", f"{SIZE}×{SIZE}"), ("Time", f"{seconds:.0f} s")],
        GREEN,
        [("Re-roll", BLURPLE), ("Variation", GREY_BUTTON), ("Edit prompt", GREY_BUTTON),
         ("Delete", GREY_BUTTON)],
        "Requested by Ada",
    )  # fmt: skip
    sheet = Image.new("RGB", (960, 660), "#1e1f22")
    sheet.paste(painting, (6, 6))
    sheet.paste(finished, (484, 6))
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (16, 630),
        "While it paints, the reply shows the newest preview; then the picture and its buttons. "
        "(Built-in tiny random models: noise.)",
        fill=MUTED,
        font=font(12),
    )
    sheet.save(OUT, optimize=True)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
