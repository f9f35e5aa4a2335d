"""Slash-command options checked against the command's own signature before discord.py reads
them. Discord sends each option with the type the command declared; a forged or buggy gateway
frame may not (a string where a whole number belongs, an attachment id that is not in the
payload's ``resolved`` part, a required option left out). discord.py then raises TypeError or
ValueError inside its own task, where no error handler answers, so the user would see "The
application did not respond". This check turns such a payload into one clear refusal."""

from __future__ import annotations

import math
from typing import Any

import discord
from discord import app_commands

OptionType = discord.AppCommandOptionType
NESTING = (OptionType.subcommand.value, OptionType.subcommand_group.value)
# Discord's integers are 53-bit safe (a JavaScript number); snowflakes travel as strings.
MAX_INTEGER = 2**53
SNOWFLAKE_TYPES = (OptionType.user, OptionType.channel, OptionType.role, OptionType.mentionable)
WHAT = {
    OptionType.string: "text",
    OptionType.integer: "a whole number",
    OptionType.boolean: "true or false",
    OptionType.number: "a number",
    OptionType.attachment: "an attached file",
}


def malformed_options(data: Any, tree: app_commands.CommandTree[Any], guild: Any) -> str | None:
    """Why the options of a slash-command payload are not what its command declares, or None
    when they are (or when the command is not ours: discord.py answers that itself)."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return "the command has no name"
    command: Any = tree.get_command(data["name"], guild=guild) or tree.get_command(data["name"])
    options: Any = data.get("options", [])
    while isinstance(command, app_commands.Group):
        if not isinstance(options, list) or len(options) != 1 or not isinstance(options[0], dict):
            return "a subcommand is missing"
        nested = options[0]
        command = command.get_command(str(nested.get("name")))
        if command is None or nested.get("type") not in NESTING:
            return "an unknown subcommand"
        options = nested.get("options", [])
    if command is None:
        return None
    if not isinstance(options, list):
        return "the options are not a list"
    resolved = data.get("resolved") or {}
    return _check_options(command, options, resolved if isinstance(resolved, dict) else {})


def _check_options(
    command: app_commands.Command[Any, ..., Any], options: list[Any], resolved: dict
) -> str | None:
    parameters = {p.display_name: p for p in command.parameters}
    seen: set[str] = set()
    for option in options:
        if not isinstance(option, dict) or not isinstance(option.get("name"), str):
            return "an option has no name"
        name = option["name"]
        parameter = parameters.get(name)
        if parameter is None:
            return f"there is no option {name!r}"
        if name in seen:
            return f"the option {name!r} was given twice"
        seen.add(name)
        problem = _value_problem(parameter, option, resolved)
        if problem is not None:
            return f"the option {name!r} {problem}"
    missing = [
        p.display_name for p in command.parameters if p.required and p.display_name not in seen
    ]
    if missing:
        return f"the required option {missing[0]!r} is missing"
    return None


def _value_problem(parameter: app_commands.Parameter, option: dict, resolved: dict) -> str | None:
    expected = parameter.type
    if option.get("type") != expected.value:
        return f"should be {WHAT.get(expected, expected.name)}"
    value = option.get("value")
    if expected is OptionType.string:
        ok = isinstance(value, str)
    elif expected is OptionType.integer:
        ok = isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INTEGER
    elif expected is OptionType.number:
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and abs(value) <= MAX_INTEGER
        )
    elif expected is OptionType.boolean:
        ok = isinstance(value, bool)
    elif expected is OptionType.attachment:
        attachments = resolved.get("attachments")
        ok = isinstance(value, str | int) and isinstance(attachments, dict)
        ok = ok and str(value) in attachments
        if not ok:
            return "names no file that came with the command"
    elif expected in SNOWFLAKE_TYPES:
        ok = isinstance(value, str | int) and not isinstance(value, bool) and str(value).isdigit()
    else:
        ok = True
    return None if ok else f"should be {WHAT.get(expected, expected.name)}"
