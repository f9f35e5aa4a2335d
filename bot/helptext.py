"""The /help text: pure, built from the settings, so it shows this bot's own limits."""

from __future__ import annotations

from collections.abc import Sequence


def help_sections(
    *, generators: Sequence[str], sizes: Sequence[str], max_steps: int, default_steps: int
) -> list[tuple[str, str]]:
    """(title, text) pairs for the /help embed's fields (each under Discord's 1024)."""
    default = generators[0] if generators else "vqgan"
    return [
        (
            "/imagine",
            f"`/imagine prompt:a lighthouse in a storm, oil painting` paints a picture. Options: "
            f"`seed` (same seed, same picture), `steps` (1-{max_steps}, default "
            f"{default_steps}), `size` ({', '.join(sizes)}), `generator` "
            f"({', '.join(generators) or default}; default {default}), `count` (1-4 pictures "
            "at once, consecutive seeds), `init_image` (start from your image), `image_prompt` "
            "(an image whose look to aim for), `strength`, `dm` (send the result to your DMs).",
        ),
        (
            "Prompts",
            "Weigh parts with `:`, split them with `|`: `a red fox:1 | blurry:-0.5` "
            "(a negative weight steers away).",
        ),
        (
            "Buttons",
            "**Re-roll**: same prompt, new seed. **Variation**: start from this picture. "
            "**Edit prompt**: change the prompt and paint again. **Delete**: remove the "
            "picture (its requester and moderators). **Cancel**: stop a picture that is "
            "waiting or painting.",
        ),
        (
            "Right-click a message",
            "Apps → **Imagine from this image**: paint from a message's image, as the init "
            "image or as an image prompt.",
        ),
        (
            "More",
            "`/queue`: your waiting pictures. `/history`: your recent pictures, each with the "
            "command that makes it again. `/info`: what the bot runs on and how busy it is. "
            "`/dms send:True`: have every picture sent to your DMs as well.",
        ),
    ]
