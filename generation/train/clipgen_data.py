"""CLIP-GEN's training pictures: where they come from, and the cache of what they become.

Sources (``--images``):
    a folder            every image below it, recursively (ImageNet's class folders work);
                        a folder of .tar files and no images: those shards
    a file list (.txt)  one image path a line, relative to the list's folder; # starts a comment
    tar shards (.tar)   webdataset shards: "data/shard-{000000..000999}.tar" (brace ranges),
                        a comma-separated list, or one .tar; a sample's first image field is used

The cache (``out/cache/NNN/``, one numbered folder per VQGAN + CLIP + picture size) holds parts:
``part-<id>.embeds.npy`` [n, E] float16 (L2-normalised CLIP image embeddings),
``part-<id>.tokens.npy`` [n, T] int16/int32 (VQGAN codes) and ``part-<id>.json`` (the pictures'
keys and the skipped ones with their reasons), written last, so a part without its json is
unfinished and is done again. A part is CHUNK new files or one tar shard. Nothing in it is ever
deleted: new files add parts, a changed file (size or mtime) gets a new row, and a cache made
with other models stays in its own folder. Training reads the parts through memory maps.

Decoding runs in DataLoader worker processes (``workers``, ``prefetch``); a picture that cannot
be decoded, is truncated, is smaller than the training size or is too large (the bot's own
limits, generation.images) is skipped and counted, never fatal.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from generation import clipgen_model as cg
from generation.errors import BadRequest
from generation.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CHUNK = 4096  # new files per part: an interrupted build loses at most this many
ENCODE_BATCH = 64
END = "__end__"  # a decoder's record that closes a unit


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Unit:
    """One part's worth of work: files (``items``: (key, path) pairs) or one tar shard."""

    name: str  # the part's id: a hash of what it holds
    items: tuple[tuple[str, str], ...] = ()
    tar: str | None = None  # a tar shard's path
    tar_key: str | None = None  # the shard's key: path, size, mtime


@dataclass
class Source:
    """What ``--images`` names: loose files (key -> path), or tar shards (key -> path)."""

    where: str
    files: dict[str, str] = field(default_factory=dict)
    shards: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.files) + len(self.shards)

    def describe(self) -> str:
        if self.shards:
            return f"{len(self.shards)} tar shard(s) of {self.where}"
        return f"{len(self.files)} image file(s) in {self.where}"


def stamp(path: Path, name: str) -> str:
    """A file's cache key: its name, size and modification time (a changed file is new)."""
    info = path.stat()
    return f"{name}:{info.st_size}:{info.st_mtime_ns}"


def find_source(images: str | Path) -> Source:
    """The pictures ``images`` names (see the module docstring), or BadRequest saying why none."""
    text = str(images)
    if ".tar" in text and (text.endswith(".tar") or "," in text or "{" in text):
        return _tar_source(text)
    path = Path(text)
    if path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
        return _list_source(path)
    if not path.is_dir():
        raise BadRequest(
            f"--images {text} is not a folder, a .txt file list or .tar shards; give one of those"
        )
    source = Source(str(path))
    for file in sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        if file.is_file():
            name = file.relative_to(path).as_posix()
            source.files[stamp(file, name)] = str(file)
    if not source.files:
        shards = sorted(p for p in path.rglob("*.tar") if p.is_file())
        if shards:  # a folder of webdataset shards
            return _tar_source(",".join(str(p) for p in shards))
        raise BadRequest(
            f"no images in {path} or its subfolders (looked for {', '.join(IMAGE_SUFFIXES)}); "
            f"give a folder of pictures"
        )
    return source


def _list_source(path: Path) -> Source:
    source = Source(str(path))
    missing = []
    for line in path.read_text(encoding="utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        file = Path(entry) if Path(entry).is_absolute() else path.parent / entry
        if not file.is_file():
            missing.append(entry)
            continue
        source.files[stamp(file, entry)] = str(file)
    if missing:
        raise BadRequest(
            f"{len(missing)} file(s) listed in {path} do not exist (e.g. {missing[0]}); fix the "
            f"list"
        )
    if not source.files:
        raise BadRequest(f"{path} lists no images; write one image path a line")
    return source


def _tar_source(text: str) -> Source:
    from braceexpand import braceexpand

    source = Source(text)
    for pattern in text.split(","):
        for name in braceexpand(pattern.strip()):
            file = Path(name)
            if not file.is_file():
                raise BadRequest(f"tar shard {name} not found; check the --images pattern")
            source.shards[stamp(file, name)] = name
    return source


# --------------------------------------------------------------------------- decoding


def decode_picture(data: bytes | str, size: tuple[int, int]) -> tuple[torch.Tensor | None, str]:
    """Image bytes or a path -> ([3, h, w] uint8 centre-cropped to ``size`` = (w, h) and
    resized, "") or (None, why it was skipped)."""
    width, height = size
    try:
        if isinstance(data, str) and os.path.getsize(data) > MAX_IMAGE_BYTES:
            return None, "too large (file)"
        if isinstance(data, bytes) and len(data) > MAX_IMAGE_BYTES:
            return None, "too large (file)"
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
                w, h = image.size
                if w * h > MAX_IMAGE_PIXELS:
                    return None, f"too large ({w}x{h})"
                if w < width or h < height:
                    return None, f"too small ({w}x{h})"
                image.load()  # a truncated file fails here
                picture = ImageOps.exif_transpose(image).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return None, "too large to decode"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return None, f"unreadable ({str(error)[:80]})"
    fitted = ImageOps.fit(picture, size, Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(fitted).copy()).permute(2, 0, 1), ""  # [3, h, w]


class Decoded(torch.utils.data.IterableDataset):
    """Pictures of ``units``, decoded: records (unit name, key, [3, h, w] uint8 or None,
    reason), each unit closed by (unit name, END, None, ""). Workers share the units."""

    def __init__(self, units: list[Unit], size: tuple[int, int]) -> None:
        self.units, self.size = units, size

    def __iter__(self) -> Iterator[tuple[str, str, torch.Tensor | None, str]]:
        info = torch.utils.data.get_worker_info()
        mine = self.units if info is None else self.units[info.id :: info.num_workers]
        for unit in mine:
            if unit.tar is None:
                for key, path in unit.items:
                    yield (unit.name, key, *decode_picture(path, self.size))
            else:
                yield from self._tar(unit)
            yield unit.name, END, None, ""

    def _tar(self, unit: Unit) -> Iterator[tuple[str, str, torch.Tensor | None, str]]:
        from webdataset.tariterators import tarfile_samples

        errors: list[str] = []

        def handler(error: Exception) -> bool:
            errors.append(f"{type(error).__name__}: {str(error)[:80]}")
            return False  # a damaged tar stops here; what came before it is kept

        for sample in tarfile_samples([{"url": unit.tar}], handler=handler):
            key = f"{unit.tar}#{sample.get('__key__')}"
            field_name = next((k for k in sample if f".{k.lower()}" in IMAGE_SUFFIXES), None)
            if field_name is None:
                yield unit.name, key, None, "no image in the sample"
                continue
            yield (unit.name, key, *decode_picture(sample[field_name], self.size))
        if errors:
            yield unit.name, f"{unit.tar}#<tar>", None, f"damaged tar ({errors[0]})"


# --------------------------------------------------------------------------- the cache


def cache_folder(root: Path, manifest: dict[str, Any], *, create: bool = True) -> Path:
    """The numbered folder under ``root`` made with these models and size (a new one when
    none is): caches of other models are kept, never overwritten."""
    root.mkdir(parents=True, exist_ok=True)
    numbered = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    for folder in numbered:
        path = folder / "manifest.json"
        if path.is_file() and cache_mismatch(json.loads(path.read_text("utf-8")), manifest) is None:
            return folder
    folder = root / f"{len(numbered):03d}"
    while folder.exists():
        folder = root / f"{int(folder.name) + 1:03d}"
    if create:
        folder.mkdir()
        text = json.dumps(manifest)
        cg.atomic_write(folder / "manifest.json", lambda p: p.write_text(text, encoding="utf-8"))
    return folder


def cache_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why a cache made as ``old`` says cannot serve ``new`` (models and size), or None."""
    if old.get("vqgan") and (reason := cg.vqgan_mismatch(old["vqgan"], new["vqgan"])):
        return f"the cache was made with another VQGAN: {reason}"
    if old.get("clip") and (reason := cg.clip_mismatch(old["clip"], new["clip"])):
        return f"the cache was made with another CLIP: {reason}"
    if old.get("size") != new["size"]:
        return f"the cache was made at {old.get('size')}, not {new['size']}"
    return None


def read_parts(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """(part id, its json) of every finished part, by id."""
    parts = []
    for path in sorted(folder.glob("part-*.json")):
        parts.append((path.name[len("part-") : -len(".json")], json.loads(path.read_text("utf-8"))))
    return parts


def pending_units(source: Source, parts: list[tuple[str, dict[str, Any]]]) -> list[Unit]:
    """The work the cache lacks: files no part holds (in chunks), tar shards no part holds."""
    done_keys: set[str] = set()
    done_shards: set[str] = set()
    for _, part in parts:
        if part.get("tar_key"):
            done_shards.add(part["tar_key"])
        else:
            done_keys.update(part["keys"])
            done_keys.update(part["skipped"])
    new = [(k, p) for k, p in source.files.items() if k not in done_keys]
    units = []
    for start in range(0, len(new), CHUNK):
        items = tuple(new[start : start + CHUNK])
        digest = hashlib.sha256("\n".join(k for k, _ in items).encode()).hexdigest()[:16]
        units.append(Unit(name=f"f{digest}", items=items))
    for key, path in source.shards.items():
        if key not in done_shards:
            digest = hashlib.sha256(key.encode()).hexdigest()[:16]
            units.append(Unit(name=f"t{digest}", tar=path, tar_key=key))
    return units


class PartWriter:
    """Collects one unit's encoded rows and skipped pictures, then writes its part."""

    def __init__(self, folder: Path, unit: Unit) -> None:
        self.folder, self.unit = folder, unit
        self.keys: list[str] = []
        self.skipped: dict[str, str] = {}
        self.embeds: list[torch.Tensor] = []
        self.tokens: list[torch.Tensor] = []

    def write(self, vocab_size: int) -> None:
        dim = self.embeds[0].shape[1] if self.embeds else 0
        embeds = torch.cat(self.embeds) if self.embeds else torch.zeros(0, dim)  # [n, E]
        tokens = torch.cat(self.tokens) if self.tokens else torch.zeros(0, 0, dtype=torch.long)
        dtype = np.int16 if vocab_size <= 2**15 else np.int32
        base = self.folder / f"part-{self.unit.name}"
        arrays = {
            "embeds": embeds.to(torch.float16).numpy(),
            "tokens": tokens.numpy().astype(dtype),
        }
        for what, array in arrays.items():
            cg.atomic_write(
                Path(f"{base}.{what}.npy"), lambda p, a=array: _save_npy(p, a)
            )  # fmt: skip
        document = {
            "keys": self.keys,
            "skipped": self.skipped,
            "tar_key": self.unit.tar_key,
            "rows": len(self.keys),
        }
        text = json.dumps(document)
        cg.atomic_write(Path(f"{base}.json"), lambda p: p.write_text(text, encoding="utf-8"))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


@torch.no_grad()
def build_parts(
    folder: Path,
    units: list[Unit],
    size: tuple[int, int],
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    vocab_size: int,
    *,
    workers: int,
    prefetch: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Decode ``units`` in DataLoader workers and write one part each. ``encode(images [b, 3,
    h, w] float in [0, 1])`` -> (embeddings [b, E], codes [b, T])."""
    if not units:
        return
    loader = torch.utils.data.DataLoader(
        Decoded(units, size),
        batch_size=None,
        num_workers=min(workers, len(units)),
        prefetch_factor=prefetch * ENCODE_BATCH if workers > 0 else None,
    )
    writers = {unit.name: PartWriter(folder, unit) for unit in units}
    waiting: dict[str, list[tuple[str, torch.Tensor]]] = {}

    def flush(name: str) -> None:
        batch = waiting.pop(name, [])
        if not batch:
            return
        images = torch.stack([p for _, p in batch]).float() / 255  # [b, 3, h, w]
        embeds, tokens = encode(images)
        writer = writers[name]
        writer.keys += [k for k, _ in batch]
        writer.embeds.append(embeds.float().cpu())
        writer.tokens.append(tokens.cpu())
        if progress is not None:
            progress(len(batch))

    for name, key, picture, reason in loader:
        if key == END:
            flush(name)
            writers.pop(name).write(vocab_size)
        elif picture is None:
            writers[name].skipped[key] = reason
            if progress is not None:
                progress(1)
        else:
            waiting.setdefault(name, []).append((key, picture))
            if len(waiting[name]) >= ENCODE_BATCH:
                flush(name)


class CachedRows:
    """The rows of a cache folder's parts, read through memory maps: ``rows(keys)`` selects,
    ``batch(index)`` gathers (embeddings [B, E] float32, codes [B, T] int64)."""

    def __init__(self, folder: Path, parts: list[tuple[str, dict[str, Any]]]) -> None:
        self.folder = folder
        self.parts = [(pid, doc) for pid, doc in parts if doc["rows"] > 0]
        counts = [doc["rows"] for _, doc in self.parts]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def keys(self) -> Iterator[tuple[int, str, str | None]]:
        """(row, key, tar key or None) of every row."""
        for index, (_, doc) in enumerate(self.parts):
            for offset, key in enumerate(doc["keys"]):
                yield int(self.offsets[index]) + offset, key, doc.get("tar_key")

    def _arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._maps:
            base = self.folder / f"part-{self.parts[index][0]}"
            self._maps[index] = (
                np.load(f"{base}.embeds.npy", mmap_mode="r"),
                np.load(f"{base}.tokens.npy", mmap_mode="r"),
            )
        return self._maps[index]

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [B] (global row numbers) -> embeddings [B, E] float32, codes [B, T] int64."""
        rows = np.asarray(rows, dtype=np.int64)
        which = np.searchsorted(self.offsets, rows, side="right") - 1  # [B]
        embeds: list[np.ndarray] = [np.empty(0)] * len(rows)
        tokens: list[np.ndarray] = [np.empty(0)] * len(rows)
        for index in np.unique(which):
            e, t = self._arrays(int(index))
            where = np.nonzero(which == index)[0]
            local = rows[where] - self.offsets[index]
            for slot, e_row, t_row in zip(where, e[local], t[local], strict=True):
                embeds[slot], tokens[slot] = e_row, t_row
        return (
            torch.from_numpy(np.stack(embeds).astype(np.float32)),
            torch.from_numpy(np.stack(tokens).astype(np.int64)),
        )


def usable_rows(rows: CachedRows, source: Source) -> np.ndarray:
    """Row numbers of the pictures ``source`` holds now (rows of removed or changed files and
    of shards no longer named stay in the cache, unused)."""
    keep = [
        row
        for row, key, tar_key in rows.keys()
        if (tar_key in source.shards if tar_key else key in source.files)
    ]
    return np.asarray(keep, dtype=np.int64)


def skipped_of(parts: list[tuple[str, dict[str, Any]]], source: Source) -> dict[str, str]:
    """key -> reason of every skipped picture the source holds now."""
    out: dict[str, str] = {}
    for _, doc in parts:
        if doc.get("tar_key"):
            if doc["tar_key"] in source.shards:
                out.update(doc["skipped"])
        else:
            out.update({k: v for k, v in doc["skipped"].items() if k in source.files})
    return out


def split_rows(
    rows: CachedRows, usable: np.ndarray, fraction: float, most: int
) -> tuple[np.ndarray, np.ndarray]:
    """(held-out, training) row numbers: the held-out ones are those whose key hashes lowest,
    so the split stays the same as pictures are added."""
    keys = {row: key for row, key, _ in rows.keys()}
    scores = np.asarray(
        [int(hashlib.sha1(keys[int(r)].encode()).hexdigest()[:12], 16) for r in usable]
    )
    order = usable[np.argsort(scores, kind="stable")]
    n_val = min(most, max(1, round(len(usable) * fraction)))
    return np.sort(order[:n_val]), np.sort(order[n_val:])
