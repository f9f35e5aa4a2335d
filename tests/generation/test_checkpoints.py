"""Checkpoints are read for their tensors only: pickled code in a downloaded file never runs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from generation.checkpoints import load_checkpoint, load_state_dict, save_safetensors
from generation.errors import CheckpointError


def write_marker(path: str) -> str:
    """What the malicious payload does when unpickled: write a file."""
    Path(path).write_text("pwned")
    return "pwned"


class Payload:
    """An object whose unpickling calls write_marker(path) (pickle's __reduce__ protocol)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (write_marker, (self.path,))


class Callback:
    """Stands for the Lightning callback objects inside published checkpoints."""

    def __init__(self) -> None:
        self.best_score = torch.tensor(1.0)
        self.monitor = "val/rec_loss"


def _malicious_checkpoint(tmp_path: Path, marker: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    tensors = {
        "encoder.conv_in.weight": torch.randn(4, 3, 3, 3),
        "quantize.embedding.weight": torch.randn(8, 2),
    }
    path = tmp_path / "last.ckpt"
    torch.save(
        {"state_dict": tensors, "callbacks": {"cb": Callback()}, "hook": Payload(marker)}, path
    )
    return path, tensors


def test_the_payload_is_live_under_plain_unpickling(tmp_path) -> None:
    # Proves the test below tests something: unrestricted loading runs the payload.
    marker = tmp_path / "marker.txt"
    path, _ = _malicious_checkpoint(tmp_path, marker)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_malicious_pickle_yields_the_tensors_and_never_runs(tmp_path) -> None:
    marker = tmp_path / "marker.txt"
    path, tensors = _malicious_checkpoint(tmp_path, marker)
    loaded = load_state_dict(path)
    assert not marker.exists()
    assert loaded.keys() == tensors.keys()
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value)
    # Whatever else the file held came back inert, not as the pickled objects.
    whole = load_checkpoint(path)
    assert not isinstance(whole["callbacks"]["cb"], Callback)
    assert whole["hook"] != "pwned"


def test_a_bare_state_dict_loads(tmp_path) -> None:
    model = torch.nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    loaded = load_state_dict(tmp_path / "model.pt")
    assert torch.equal(loaded["weight"], model.weight.detach())


def test_old_non_zip_format_loads_restricted_too(tmp_path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "old.pth"
    weight = torch.randn(2, 2)
    torch.save(
        {"state_dict": {"w": weight}, "hook": Payload(marker)},
        path,
        _use_new_zipfile_serialization=False,
    )
    assert torch.equal(load_state_dict(path)["w"], weight)
    assert not marker.exists()


def test_safetensors_round_trip(tmp_path) -> None:
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_safetensors(tensors, tmp_path / "model.safetensors")
    loaded = load_state_dict(tmp_path / "model.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_truncated_checkpoint_is_a_checkpoint_error(tmp_path, suffix) -> None:
    path = tmp_path / f"model{suffix}"
    tensors = {"w": torch.randn(64, 64)}
    if suffix == ".ckpt":
        torch.save({"state_dict": tensors}, path)
    else:
        save_safetensors(tensors, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated.*download it again"):
        load_state_dict(path)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_garbage_checkpoint_is_a_checkpoint_error(tmp_path, suffix) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_state_dict(path)


def test_a_pickle_without_tensors_is_refused(tmp_path) -> None:
    path = tmp_path / "empty.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {"epoch": 3}}))
    with pytest.raises(CheckpointError):
        load_state_dict(path)


def test_missing_checkpoint_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict(tmp_path / "nope.ckpt")


# ---- hostile whole-module pickles (issue 20.4) ----------------------------------------------


class _StandInEncoder:
    """Pickles under the allow-listed name dall_e.encoder.Encoder, so the reader turns it into a
    ModuleRecord; its attributes are whatever a hostile file wants them to be."""


_StandInEncoder.__module__ = "dall_e.encoder"
_StandInEncoder.__qualname__ = _StandInEncoder.__name__ = "Encoder"


def _save_modules(path: Path, top: _StandInEncoder, monkeypatch) -> None:
    import dall_e.encoder

    monkeypatch.setattr(dall_e.encoder, "Encoder", _StandInEncoder)
    torch.save(top, path)
    monkeypatch.undo()


def _record(children: dict, tensors: dict | None = None) -> _StandInEncoder:
    record = _StandInEncoder()
    record.__dict__.update(_parameters=tensors or {}, _buffers={}, _modules=children)
    return record


def test_a_module_that_contains_itself_is_a_checkpoint_error(tmp_path, monkeypatch) -> None:
    top = _record({}, {"w": torch.ones(2)})
    top._modules["loop"] = top
    path = tmp_path / "encoder.pkl"
    _save_modules(path, top, monkeypatch)
    with pytest.raises(CheckpointError, match="encoder.pkl.*contains itself"):
        load_state_dict(path)


def test_shared_children_cannot_make_the_reader_work_exponentially(tmp_path, monkeypatch) -> None:
    # Each level holds the level below twice: 2**40 paths to the leaf in a file of a few KB.
    level = _record({}, {"w": torch.ones(1)})
    for _ in range(40):
        level = _record({"a": level, "b": level})
    path = tmp_path / "encoder.pkl"
    _save_modules(path, level, monkeypatch)
    assert path.stat().st_size < 20_000
    with pytest.raises(CheckpointError, match="encoder.pkl.*too many"):
        load_state_dict(path)


def test_modules_nested_too_deep_are_a_checkpoint_error(tmp_path, monkeypatch) -> None:
    level = _record({}, {"w": torch.ones(1)})
    for _ in range(100):  # a published module nests about 5 deep; the bound is 64
        level = _record({"m": level})
    path = tmp_path / "encoder.pkl"
    _save_modules(path, level, monkeypatch)
    with pytest.raises(CheckpointError, match="encoder.pkl.*deeper than"):
        load_state_dict(path)


def test_a_module_shared_twice_appears_under_both_names(tmp_path, monkeypatch) -> None:
    # As in torch: a submodule kept under two attribute names is in the state dict twice.
    shared = _record({}, {"w": torch.arange(3.0)})
    path = tmp_path / "encoder.pkl"
    _save_modules(path, _record({"first": shared, "second": shared}), monkeypatch)
    loaded = load_state_dict(path)
    assert set(loaded) == {"first.w", "second.w"}
    assert torch.equal(loaded["second.w"], torch.arange(3.0))


def test_containers_nested_without_end_are_a_checkpoint_error(tmp_path) -> None:
    # A checkpoint whose object is lists nested 100 000 deep, written by hand (pickle.dumps
    # would recurse): it is read without recursing and refused for holding no tensors.
    import zipfile

    path = tmp_path / "nested.ckpt"
    torch.save({"w": torch.ones(1)}, path)
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    nested = b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b"."
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, nested if name.endswith("/data.pkl") else data)
    with pytest.raises(CheckpointError, match="nested.ckpt holds no state dict"):
        load_state_dict(path)
