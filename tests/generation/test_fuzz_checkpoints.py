"""Fuzzing the allow-listing checkpoint reader (issue 19 item 3): hypothesis-made pickle
programs (dangerous globals called with REDUCE, NEWOBJ, INST, OBJ and BUILD, persistent ids,
memo tricks, raw byte soup), as bare pickles and inside torch's zip format, and random bytes
under every checkpoint suffix. Every one either loads as tensors or is refused with
CheckpointError; nothing else is raised, no payload runs, no file is written."""

from __future__ import annotations

import io
import struct
import zipfile
from pathlib import Path

import torch
from hypothesis import given
from hypothesis import strategies as st

from generation.checkpoints import load_state_dict
from generation.errors import CheckpointError
from tests.fuzzing import files_under, fuzz_settings, tally

RAN: list[str] = []  # what the payload functions below append to when they run


def write_marker(path: str) -> str:
    """A payload a hostile checkpoint would call: it must never run."""
    RAN.append(path)
    Path(path).write_text("pwned")
    return "pwned"


# Globals a hostile file names: callables that act on the world, and the allowed ones (so that
# the fuzzer also feeds odd arguments to what the reader does call).
DANGEROUS = [
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "open"),
    ("builtins", "__import__"),
    ("builtins", "getattr"),
    ("__builtin__", "eval"),
    ("subprocess", "Popen"),
    ("subprocess", "check_output"),
    ("shutil", "rmtree"),
    ("pathlib", "Path"),
    ("io", "FileIO"),
    ("torch", "save"),
    ("torch", "load"),
    ("torch.serialization", "load"),
    ("numpy", "load"),
    ("tests.generation.test_fuzz_checkpoints", "write_marker"),
]
ALLOWED = [
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "float32"),
    ("builtins", "set"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("torch.nn.modules.container", "Sequential"),
    ("dall_e.encoder", "Encoder"),
]


def short_str(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")[:255]
    return b"\x8c" + bytes([len(data)]) + data  # SHORT_BINUNICODE


def global_op(module: str, name: str, stacked: bool) -> bytes:
    if stacked:  # STACK_GLOBAL takes the two names from the stack
        return short_str(module) + short_str(name) + b"\x93"
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def opcodes(marker: str) -> st.SearchStrategy[bytes]:
    names = st.sampled_from(DANGEROUS + ALLOWED)
    args = st.sampled_from(
        [marker, f"touch {marker}", f"open({marker!r}, 'w').write('x')", "storage", "cpu", ""]
    )
    return st.one_of(
        st.builds(lambda n, s: global_op(*n, s), names, st.booleans()),
        args.map(short_str),
        st.integers(-(2**31), 2**31 - 1).map(lambda i: b"J" + struct.pack("<i", i)),  # BININT
        st.sampled_from(
            [
                b"(",  # MARK
                b")",  # EMPTY_TUPLE
                b"t",  # TUPLE
                b"\x85",  # TUPLE1
                b"\x86",  # TUPLE2
                b"N",  # NONE
                b"}",  # EMPTY_DICT
                b"]",  # EMPTY_LIST
                b"u",  # SETITEMS
                b"s",  # SETITEM
                b"a",  # APPEND
                b"e",  # APPENDS
                b"b",  # BUILD
                b"R",  # REDUCE
                b"\x81",  # NEWOBJ
                b"\x92",  # NEWOBJ_EX
                b"o",  # OBJ
                b"Q",  # BINPERSID
                b"\x94",  # MEMOIZE
                b"h\x00",  # BINGET 0
                b"q\x00",  # BINPUT 0
                b"2",  # DUP
                b"0",  # POP
                b"\x88",  # NEWTRUE
            ]
        ),
        st.sampled_from(DANGEROUS).map(
            lambda n: b"i" + n[0].encode() + b"\n" + n[1].encode() + b"\n"  # INST (after MARK)
        ),
        st.binary(max_size=8),  # any byte: unknown opcodes, truncated arguments
    )


def attacks(marker: str) -> st.SearchStrategy[bytes]:
    """Well-formed calls of a dangerous global, the classic __reduce__ exploit and friends."""
    call = st.sampled_from([b"R", b"\x81", b"\x92"])
    target = st.sampled_from(DANGEROUS)
    arg = st.sampled_from([marker, f"touch {marker}", f"open({marker!r}, 'w').write('x')"])
    return st.builds(
        lambda t, s, a, c: (
            global_op(*t, s)
            + short_str(a)
            + b"\x85"  # (arg,)
            + (b"}" if c == b"\x92" else b"")  # NEWOBJ_EX also takes kwargs
            + c
        ),
        target,
        st.booleans(),
        arg,
        call,
    )


def program(marker: str) -> st.SearchStrategy[bytes]:
    body = st.lists(st.one_of(opcodes(marker), attacks(marker)), min_size=1, max_size=30)
    # Ends with STOP; the byte soup inside also makes programs that stop early or never.
    return st.builds(
        lambda proto, parts: bytes([0x80, proto]) + b"".join(parts) + b".",
        st.sampled_from([2, 4, 5]),
        body,
    )


def zipped(pickle_bytes: bytes) -> bytes:
    """A torch.save zip whose data.pkl is the fuzzed program (the other records stay real)."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = pickle_bytes if info.filename.endswith("/data.pkl") else source.read(info)
            target.writestr(info.filename, data)
    return out.getvalue()


def load_and_judge(kind: str, sandbox: Path, name: str, data: bytes) -> None:
    """Write ``data`` as checkpoint ``name`` in ``sandbox``, load it, and check the rules."""
    marker = sandbox / "marker"
    path = sandbox / name
    path.write_bytes(data)
    before = files_under(sandbox)
    ran = len(RAN)
    try:
        tensors = load_state_dict(path)
    except CheckpointError as error:
        message = str(error)
        assert message and "\n" not in message, message
        outcome = "refused"
    else:
        assert isinstance(tensors, dict) and tensors
        assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items())
        outcome = "loaded"
    # Anything other than CheckpointError propagates and fails the property.
    assert len(RAN) == ran, "a pickled payload ran"
    assert not marker.exists(), "a pickled payload wrote a file"
    assert files_under(sandbox) == before, "the loader wrote into the folder"
    path.unlink()
    tally(kind, outcome)


def sandbox_of(tmp_path_factory: object) -> Path:
    return Path(tmp_path_factory.mktemp("fuzz"))  # type: ignore[attr-defined]


@fuzz_settings()
@given(data=st.data(), zip_it=st.booleans())
def test_pickle_programs_are_refused_or_load_safely(
    tmp_path_factory: object, data: st.DataObject, zip_it: bool
) -> None:
    sandbox = sandbox_of(tmp_path_factory)
    pickle_bytes = data.draw(program(str(sandbox / "marker")), label="pickle")
    payload = zipped(pickle_bytes) if zip_it else pickle_bytes
    load_and_judge("pickle-zip" if zip_it else "pickle-raw", sandbox, "model.ckpt", payload)


@fuzz_settings()
@given(
    data=st.binary(max_size=4096),
    suffix=st.sampled_from([".ckpt", ".pt", ".pth", ".bin", ".safetensors"]),
)
def test_random_bytes_are_refused(tmp_path_factory: object, data: bytes, suffix: str) -> None:
    sandbox = sandbox_of(tmp_path_factory)
    load_and_judge("random-bytes", sandbox, f"model{suffix}", data)


@fuzz_settings()
@given(cut=st.integers(min_value=0), flip=st.integers(min_value=0), value=st.integers(0, 255))
def test_damaged_real_checkpoints_are_refused_or_load(
    tmp_path_factory: object, cut: int, flip: int, value: int
) -> None:
    """A real torch.save file, truncated or with one byte changed."""
    sandbox = sandbox_of(tmp_path_factory)
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}}, buffer)
    data = bytearray(buffer.getvalue())
    data[flip % len(data)] = value
    load_and_judge("damaged-real", sandbox, "model.ckpt", bytes(data[: cut % (len(data) + 1)]))


def test_the_fuzzer_reaches_the_unpickler(tmp_path: Path) -> None:
    """The programs above do reach find_class: a well-formed exploit of this kind would run
    with plain pickle, and the reader refuses it (so 'refused' is not just 'unreadable')."""
    import pickle

    marker = tmp_path / "marker"
    exploit = (
        b"\x80\x04"
        + global_op("tests.generation.test_fuzz_checkpoints", "write_marker", True)
        + short_str(str(marker))
        + b"\x85R."
    )
    assert pickle.loads(exploit) == "pwned" and marker.exists()  # plain pickle runs it
    marker.unlink()
    RAN.clear()
    load_and_judge("control", tmp_path, "model.ckpt", zipped(exploit))
    assert RAN == [] and not marker.exists()
