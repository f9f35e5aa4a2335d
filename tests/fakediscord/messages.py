"""Creating and editing stored messages from request bodies, with Discord's limits.

The same rules serve every route that writes a message (interaction callbacks, webhook
followups and edits, bot-token channel messages):

* fields present in the body replace the stored ones; absent fields stay (edits);
* `attachments` lists what the message keeps: an entry whose id is a small integer points at
  the uploaded part `files[id]`, an entry whose id is one of the message's attachment ids
  keeps that attachment; uploaded files nobody listed are appended; with no `attachments`
  key, an edit keeps the old attachments and appends the new files;
* Discord's limits (2000 characters of content, 10 embeds of at most 6000 characters, 5
  rows of 5 buttons, custom ids of 100 characters, ...) are enforced with the same
  "Invalid Form Body" (50035) errors, so a bot that overflows them fails here as it would
  in production.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from . import faults
from .models import (
    FLAG_COMPONENTS_V2,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    FLAG_SUPPRESS_NOTIFICATIONS,
    FakeAttachment,
    StoredMessage,
    iter_components,
)
from .recording import UploadedFile

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
MAX_ATTACHMENTS = 10
MAX_ROWS = 5
MAX_BUTTONS_PER_ROW = 5
MAX_CUSTOM_ID = 100
MAX_BUTTON_LABEL = 80

EMBED_FIELD_LIMITS = {"title": 256, "description": 4096}
CREATE_FLAGS = (
    FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_EPHEMERAL | FLAG_COMPONENTS_V2
)
EDIT_FLAGS = FLAG_SUPPRESS_EMBEDS | FLAG_COMPONENTS_V2

# Makes a CDN attachment for an uploaded file: (filename, data, description) -> attachment.
AttachmentMaker = Callable[[str, bytes, "str | None"], FakeAttachment]

_FILE_FIELD = re.compile(r"^files\[(\d+)\]$")


def validate_fields(body: dict[str, Any], *, components_v2: bool = False) -> None:
    """Raise Invalid Form Body (50035) where the body breaks one of Discord's message limits.

    components_v2: the message is (or becomes) a components-v2 message (flag 1 << 15), whose
    top level may hold containers, sections and text instead of action rows."""
    errors: dict[str, Any] = {}
    content = body.get("content")
    if content is not None and len(str(content)) > MAX_CONTENT:
        errors["content"] = faults.field_error(
            "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length."
        )
    embeds = body.get("embeds")
    if embeds:
        embed_errors = _embed_errors(embeds)
        if embed_errors:
            errors["embeds"] = embed_errors
    components = body.get("components")
    if components:
        v2 = components_v2 or bool(int(body.get("flags") or 0) & FLAG_COMPONENTS_V2)
        component_errors = _component_errors(components, v2=v2)
        if component_errors:
            errors["components"] = component_errors
    attachments = body.get("attachments")
    if attachments is not None and len(attachments) > MAX_ATTACHMENTS:
        errors["attachments"] = faults.field_error(
            "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ATTACHMENTS} or fewer in length."
        )
    if errors:
        raise faults.invalid_form_body(errors)


def _embed_errors(embeds: list[dict[str, Any]]) -> dict[str, Any]:
    if len(embeds) > MAX_EMBEDS:
        return faults.field_error(
            "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length."
        )
    errors: dict[str, Any] = {}
    total = 0
    for i, embed in enumerate(embeds):
        one: dict[str, Any] = {}
        for key, limit in EMBED_FIELD_LIMITS.items():
            text = embed.get(key) or ""
            total += len(text)
            if len(text) > limit:
                one[key] = faults.field_error(
                    "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."
                )
        fields = embed.get("fields") or []
        if len(fields) > 25:
            one["fields"] = faults.field_error(
                "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
            )
        for j, field in enumerate(fields):
            name, value = str(field.get("name", "")), str(field.get("value", ""))
            total += len(name) + len(value)
            if len(name) > 256 or len(value) > 1024:
                one.setdefault("fields", {})[str(j)] = faults.field_error(
                    "BASE_TYPE_MAX_LENGTH", "Field names: 256, values: 1024 characters at most."
                )
        footer = (embed.get("footer") or {}).get("text") or ""
        author = (embed.get("author") or {}).get("name") or ""
        total += len(footer) + len(author)
        if len(footer) > 2048:
            one["footer"] = faults.field_error(
                "BASE_TYPE_MAX_LENGTH", "Must be 2048 or fewer in length."
            )
        if len(author) > 256:
            one["author"] = faults.field_error(
                "BASE_TYPE_MAX_LENGTH", "Must be 256 or fewer in length."
            )
        if one:
            errors[str(i)] = one
    if total > MAX_EMBED_TOTAL and not errors:
        return faults.field_error(
            "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL}"
        )
    return errors


def _component_errors(components: list[dict[str, Any]], *, v2: bool) -> dict[str, Any]:
    errors: dict[str, Any] = {}
    if not v2:
        if len(components) > MAX_ROWS:
            return faults.field_error(
                "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ROWS} or fewer in length."
            )
        for i, row in enumerate(components):
            if row.get("type") != 1:
                errors[str(i)] = faults.field_error(
                    "COMPONENT_LAYOUT_WIDTH_EXCEEDED", "Top-level components must be action rows."
                )
                continue
            children = row.get("components") or []
            buttons = [c for c in children if c.get("type") == 2]
            if len(buttons) > MAX_BUTTONS_PER_ROW or (buttons and len(buttons) != len(children)):
                errors[str(i)] = faults.field_error(
                    "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                    "An action row holds up to 5 buttons or a single select menu.",
                )
    seen: set[str] = set()
    for component in iter_components(components):
        custom_id = component.get("custom_id")
        if component.get("type") == 2:
            label = component.get("label") or ""
            if len(label) > MAX_BUTTON_LABEL:
                errors.setdefault(
                    "label",
                    faults.field_error(
                        "BASE_TYPE_MAX_LENGTH",
                        f"Button labels must be {MAX_BUTTON_LABEL} or fewer in length.",
                    ),
                )
            is_link = component.get("style") == 5
            if is_link and not component.get("url"):
                errors.setdefault(
                    "url", faults.field_error("BASE_TYPE_REQUIRED", "Link buttons need a url.")
                )
            if not is_link and component.get("style") != 6 and not custom_id:
                errors.setdefault(
                    "custom_id",
                    faults.field_error(
                        "BASE_TYPE_REQUIRED", "Buttons other than links need a custom_id."
                    ),
                )
        if custom_id is None:
            continue
        if len(custom_id) > MAX_CUSTOM_ID:
            errors.setdefault(
                "custom_id",
                faults.field_error(
                    "BASE_TYPE_MAX_LENGTH", f"custom_id must be {MAX_CUSTOM_ID} or fewer in length."
                ),
            )
        if custom_id in seen:
            errors.setdefault(
                "custom_id",
                faults.field_error(
                    "COMPONENT_CUSTOM_ID_DUPLICATED", f"custom_id {custom_id!r} is used twice."
                ),
            )
        seen.add(custom_id)
    return errors


def check_file_sizes(files: list[UploadedFile], limit: int) -> None:
    for upload in files:
        if upload.size > limit:
            raise faults.entity_too_large(limit)


def resolve_attachments(
    existing: list[FakeAttachment],
    listed: list[dict[str, Any]] | None,
    files: list[UploadedFile],
    make: AttachmentMaker,
    *,
    editing: bool,
) -> list[FakeAttachment]:
    """The message's attachments after this request (see the module docstring for the rules)."""
    by_index: dict[int, UploadedFile] = {}
    for upload in files:
        found = _FILE_FIELD.match(upload.field)
        if found:
            by_index[int(found.group(1))] = upload
    keep_by_id = {a.id: a for a in existing}

    if listed is None:
        kept = list(existing) if editing else []
        return kept + [make(u.filename, u.data, None) for u in files]

    result: list[FakeAttachment] = []
    used: set[int] = set()
    errors: dict[str, Any] = {}
    for position, entry in enumerate(listed):
        try:
            ref = int(entry.get("id"))
        except (TypeError, ValueError):
            errors[str(position)] = faults.field_error(
                "BASE_TYPE_REQUIRED", "Attachments need an id."
            )
            continue
        if ref in keep_by_id:
            result.append(keep_by_id[ref])
        elif ref in by_index:
            upload = by_index[ref]
            used.add(ref)
            filename = entry.get("filename") or upload.filename
            result.append(make(filename, upload.data, entry.get("description")))
        else:
            errors[str(position)] = faults.field_error(
                "ATTACHMENT_NOT_FOUND",
                f"id {ref} is neither an uploaded files[{ref}] part"
                " nor an attachment of this message",
            )
    if errors:
        raise faults.invalid_form_body({"attachments": errors})
    for index, upload in sorted(by_index.items()):
        if index not in used:
            result.append(make(upload.filename, upload.data, None))
    return result


def apply_body(
    message: StoredMessage,
    body: dict[str, Any],
    files: list[UploadedFile],
    make: AttachmentMaker,
    *,
    editing: bool,
) -> None:
    """Write the body's fields into the message (no revision is recorded here).

    Nothing changes when the body is refused."""
    validate_fields(body, components_v2=bool(message.flags & FLAG_COMPONENTS_V2))
    content = message.content
    if "content" in body:
        content = "" if body["content"] is None else str(body["content"])
    embeds = list(body["embeds"] or []) if "embeds" in body else message.embeds
    components = list(body["components"] or []) if "components" in body else message.components
    attachments = message.attachments
    if "attachments" in body or files:
        attachments = resolve_attachments(
            message.attachments, body.get("attachments"), files, make, editing=editing
        )
    requested = int(body.get("flags") or 0)
    flags = message.flags
    if editing:
        flags = (flags & ~(EDIT_FLAGS | FLAG_LOADING)) | (requested & EDIT_FLAGS)
    elif "flags" in body:
        flags = (flags & FLAG_LOADING) | (requested & CREATE_FLAGS)
    if not flags & FLAG_LOADING and not (content or embeds or attachments or components):
        raise faults.empty_message()

    message.content = content
    message.embeds = embeds
    message.components = components
    message.attachments = attachments
    message.flags = flags
    if not editing:
        message.tts = bool(body.get("tts", False))
        message.nonce = body.get("nonce")
