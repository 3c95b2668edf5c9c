"""Case files from an untrusted pull request are data: confined includes, no echo of files
that did not parse, hardened YAML, bounded images, safe ids and registry names, and one
one-line error per bad file while the other cases load. Fast: nothing loads a model."""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.case_yaml import MAX_CASE_BYTES, MAX_MESSAGE_CHARS, MAX_YAML_NODES
from harness.cases import (
    MAX_IMAGE_PIXELS,
    CaseError,
    LocalModel,
    discover,
    load_case,
    load_cases,
)

MINIMAL = "model: {synth: gemma4}\nmessages: [{role: user, content: hi}]\n"
SHADOW = "root:$6$Xq9.secretsalt$hashhashhash:19000:0:99999:7:::\n"
SECRETS = ("$6$", "secretsalt", "hashhash")


def write(directory: Path, name: str, text: str | bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def only_error(errors: list[CaseError], path: Path) -> CaseError:
    (error,) = [e for e in errors if e.source == str(path)]
    text = str(error)
    assert text.startswith(f"{path}: ") and len(text.splitlines()) == 1, text
    return error


def one_error(path: Path) -> CaseError:
    with pytest.raises(CaseError) as info:
        load_case(path)
    assert len(str(info.value).splitlines()) == 1
    return info.value


def within(seconds: float, fn: Callable[[], Any], fifos: list[Path]) -> Any:
    """`fn()`, failing (not hanging) if it blocks on one of `fifos`."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:  # a writer that opens and closes unblocks the reader
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"blocked on a FIFO for {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit grayscale PNG of any size, written in milliseconds (all zeros)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )
    return path


# ---- 1. includes are confined to the cases root --------------------------------------------


def test_includes_outside_the_cases_root_are_refused_unless_allowed(tmp_path):
    cases = tmp_path / "cases"
    shared = write(tmp_path / "shared", "_base.yaml", MINIMAL)
    write(cases, "relative.yaml", "include: ../shared/_base.yaml\n")
    write(cases, "absolute.yaml", f"include: {shared}\n")
    (cases / "_link.yaml").symlink_to(shared)  # inside by name, outside after symlinks
    write(cases, "symlinked.yaml", "include: _link.yaml\n")
    loaded, errors = load_cases([cases])
    assert loaded == [] and len(errors) == 3
    for name in ("relative", "absolute", "symlinked"):
        error = only_error(errors, cases / f"{name}.yaml")
        assert error.field == "include" and "outside the cases root" in error.message

    widened, errors = load_cases([cases], include_roots=[tmp_path / "shared"])
    assert sorted(c.id for c in widened) == ["absolute", "relative", "symlinked"] and not errors


def test_a_file_argument_is_rooted_at_its_directory(tmp_path):
    write(tmp_path, "_base.yaml", MINIMAL)
    write(tmp_path / "sub", "_sub.yaml", "include: ../_base.yaml\n")
    inside = write(tmp_path / "sub", "inside.yaml", "include: _sub.yaml\n")
    assert load_case(inside, include_roots=[tmp_path]).id == "inside"
    loaded, errors = load_cases([inside])
    assert not loaded and "outside the cases root" in str(only_error(errors, inside))
    assert one_error(inside).field == "include"  # load_case(path): root is path's parent


def test_a_case_file_symlinked_out_of_the_directory_is_not_read(tmp_path):
    secret = write(tmp_path / "home", "secret.yaml", MINIMAL)
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / "leak.yaml").symlink_to(secret)
    loaded, errors = load_cases([tmp_path / "cases"])
    assert not loaded and "outside the cases root" in str(errors[0])


def test_include_cycles_are_still_reported(tmp_path):
    write(tmp_path, "a.yaml", "include: [_b.yaml]\n")
    write(tmp_path, "_b.yaml", "include: a.yaml\n")
    assert "include cycle" in one_error(tmp_path / "a.yaml").message


# ---- 2. errors never echo a file that did not parse ----------------------------------------


def test_an_included_non_yaml_file_is_not_echoed(tmp_path):
    write(tmp_path, "_shadow", SHADOW)
    error = one_error(write(tmp_path, "case.yaml", "include: _shadow\n" + MINIMAL))
    assert error.field == "(unknown key)" and "Extra inputs" in error.message
    assert not any(s in str(error) for s in SECRETS), error


def test_yaml_errors_name_line_and_problem_but_not_the_text(tmp_path):
    tag = one_error(write(tmp_path, "tag.yaml", MINIMAL + f"description: !{SHADOW}"))
    assert "line 3" in str(tag) and "constructor for the tag" in str(tag)
    indent = one_error(write(tmp_path, "indent.yaml", f"a: {SHADOW.strip()} x: y\n"))
    assert "line 1" in str(indent)
    for error in (tag, indent):
        assert not any(s in str(error) for s in SECRETS), error


def test_errors_are_one_short_line(tmp_path):
    long_name = "x" * 3000
    error = one_error(write(tmp_path, "long.yaml", f"include: ../{long_name}\n"))
    assert len(error.message) <= MAX_MESSAGE_CHARS
    error = CaseError("f.yaml", "a\u2028b\x85c\nd\re", field="x\ny")
    assert len(str(error).splitlines()) == 1 and error.field == "(unknown key)"


# ---- 3. hardened YAML reading ---------------------------------------------------------------


def test_aliases_and_anchors_are_refused(tmp_path):
    laughs = 'a: &a ["lol","lol"]\nb: &b [*a,*a]\nc: [*b,*b]\n'
    error = one_error(write(tmp_path, "laughs.yaml", MINIMAL + laughs))
    assert "YAML aliases/anchors are not allowed in case files" in error.message
    assert "line 3" in error.message


def test_duplicate_keys_are_an_error_naming_the_key_and_line(tmp_path):
    error = one_error(write(tmp_path, "dup.yaml", MINIMAL + "model: {path: /x}\n"))
    assert "duplicate key 'model'" in error.message and "line 3" in error.message
    odd = write(tmp_path, "odd.yaml", f"'{SHADOW.strip()}': 1\n'{SHADOW.strip()}': 2\n")
    error = one_error(odd)
    assert "duplicate key (unknown key)" in error.message and "line 2" in error.message
    assert not any(s in str(error) for s in SECRETS)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a: [" + "0, " * (MAX_YAML_NODES + 10) + "]\n", f"more than {MAX_YAML_NODES} nodes"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper"),
        ("prefill_step_size: " + "9" * 5000 + "\n", "invalid value"),  # past int's digit limit
        (MINIMAL + "description: 2001-13-45\n", "invalid value"),  # a timestamp, month 13
        (MINIMAL + "description: !!float nope\n", "invalid value"),
    ],
)
def test_pathological_yaml_is_a_named_error(tmp_path, text, words):
    error = one_error(write(tmp_path, "bad.yaml", text))
    assert words in error.message and "malformed YAML (line" in error.message


def test_files_above_the_size_limit_are_refused(tmp_path):
    big = write(tmp_path, "big.yaml", MINIMAL + "#" * MAX_CASE_BYTES)
    assert "larger than the 1 MiB limit" in one_error(big).message


def test_fifos_and_directories_are_not_read_and_never_hang(tmp_path):
    cases = tmp_path / "cases"
    write(cases, "good.yaml", MINIMAL)
    os.mkfifo(cases / "fifo.yaml")
    os.mkfifo(cases / "_fifo.yaml")
    (cases / "dir.yaml").mkdir()
    write(cases, "includes_fifo.yaml", "include: _fifo.yaml\n" + MINIMAL)
    fifos = [cases / "fifo.yaml", cases / "_fifo.yaml"]
    loaded, errors = within(10, lambda: load_cases([cases]), fifos)
    assert [c.id for c in loaded] == ["good"]
    for name in ("fifo", "dir", "includes_fifo"):
        assert "not a regular file" in only_error(errors, cases / f"{name}.yaml").message


def test_non_utf8_bytes_fail_that_file_only(tmp_path):
    write(tmp_path, "a.yaml", MINIMAL)
    bad = write(tmp_path, "b.yaml", MINIMAL.encode() + b"description: \xff\xfe\n")
    write(tmp_path, "c.yaml", MINIMAL)
    loaded, errors = load_cases([tmp_path])
    assert [c.id for c in loaded] == ["a", "c"]
    assert "not UTF-8" in only_error(errors, bad).message


# ---- 4. images: bounded size, regular files --------------------------------------------------


def image_case(directory: Path, name: str, image: str) -> None:
    write(
        directory,
        f"{name}.yaml",
        "model: {synth: gemma4}\nmessages:\n  - role: user\n    content:\n"
        f"      - {{type: text, text: hi}}\n      - {{type: image, image: {image}}}\n",
    )


def test_oversized_and_non_regular_images_are_named_errors(tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 200), "red").save(tmp_path / "normal.png")
    png(tmp_path / "bomb.png", 20_000, 20_000)  # past PIL's own decompression-bomb limit
    png(tmp_path / "large.png", 10_000, 6_000)  # past ours, below PIL's
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "folder.png").mkdir()
    for name in ("normal", "bomb", "large", "fifo", "folder"):
        image_case(tmp_path, name, f"{name}.png")
    loaded, errors = load_cases([tmp_path])
    assert not errors and len(loaded) == 5
    outcome: dict[str, str] = {}
    for case in loaded:
        try:
            within(10, case.check_images, [tmp_path / "fifo.png"])
            outcome[case.id] = "ok"
        except CaseError as exc:
            assert exc.source == case.source and exc.field == "messages.0.content.1.image"
            assert len(str(exc).splitlines()) == 1
            outcome[case.id] = exc.message
    assert outcome.pop("normal") == "ok"
    assert "pixel limit" in outcome.pop("bomb")
    assert f"10000x6000, above the limit of {MAX_IMAGE_PIXELS} pixels" in outcome.pop("large")
    assert all("not a regular file" in m for m in outcome.values()), outcome


def test_the_pixel_limit_is_a_parameter_and_pil_warnings_become_errors(tmp_path):
    png(tmp_path / "photo.png", 3000, 2000)
    png(tmp_path / "warned.png", 10_000, 10_000)  # PIL warns (not raises) at this size
    image_case(tmp_path, "photo", "photo.png")
    image_case(tmp_path, "warned", "warned.png")
    photo, warned = sorted(load_cases([tmp_path])[0], key=lambda c: c.id)
    photo.check_images()  # 6 MP is well within the default
    with pytest.raises(CaseError, match="above the limit of 1000000 pixels"):
        photo.check_images(max_pixels=1_000_000)
    with pytest.raises(CaseError, match="pixel limit") as info:
        warned.check_images(max_pixels=10**9)
    assert info.value.field == "messages.0.content.1.image"


# ---- 5. ids become file names ----------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["../../x", "..", "a..b", ".hidden", "-rf", "a/b", "a\\b"])
def test_ids_cannot_name_other_files(tmp_path, bad_id):
    error = one_error(write(tmp_path, "case.yaml", MINIMAL + f"id: '{bad_id}'\n"))
    assert error.field == "id" and error.case_id == "case"


def test_ordinary_ids_still_load(tmp_path):
    assert (
        load_case(write(tmp_path, "c.yaml", MINIMAL + "id: gemma4.v2-a_1\n")).id == "gemma4.v2-a_1"
    )


# ---- 6. an include's model of another kind is replaced, not merged ---------------------------


def test_a_different_model_kind_replaces_the_included_one(tmp_path):
    write(tmp_path, "_base.yaml", "model: {synth: gemma4, options: {hidden_size: 64}}\n")
    rest = "messages: [{role: user, content: hi}]\n"
    local = load_case(
        write(tmp_path, "local.yaml", "include: _base.yaml\nmodel: {path: /m}\n" + rest)
    )
    assert isinstance(local.model, LocalModel) and local.model.path == "/m"
    hub = load_case(write(tmp_path, "hub.yaml", "include: _base.yaml\nmodel: {hf: org/m}\n" + rest))
    assert hub.model.hf == "org/m"
    same = load_case(
        write(tmp_path, "same.yaml", "include: _base.yaml\nmodel: {options: {seed: 1}}\n" + rest)
    )
    assert same.model.options == {"hidden_size": 64, "seed": 1}


def test_a_check_of_another_kind_replaces_the_included_one(tmp_path):
    write(tmp_path, "_base.yaml", MINIMAL + "tolerances: {logits: {check: topk, k: 5}}\n")
    case = load_case(
        write(tmp_path, "c.yaml", "include: _base.yaml\ntolerances: {logits: {check: exact}}\n")
    )
    assert [s.check for s in case.tolerances["logits"]] == ["exact"]


# ---- 7. discovery errors belong to their argument --------------------------------------------


def test_missing_and_empty_targets_are_errors_for_that_target_only(tmp_path):
    good = tmp_path / "good"
    write(good, "one.yaml", MINIMAL)
    (tmp_path / "empty").mkdir()
    missing = tmp_path / "missing"
    loaded, errors = load_cases([missing, tmp_path / "empty", good])
    assert [c.id for c in loaded] == ["one"]
    assert [str(e) for e in errors] == [
        f"{missing}: no cases found (looked in {missing})",
        f"{tmp_path / 'empty'}: directory holds no case files (*.yaml)",
    ]
    collected: list[CaseError] = []
    assert discover([missing, good], collected) == [good / "one.yaml"]
    assert len(collected) == 1


def test_the_default_cases_directory_missing_reads_looked_in_dot_cases(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loaded, errors = load_cases([Path("cases")])
    assert loaded == [] and [str(e) for e in errors] == [
        "cases: no cases found (looked in ./cases)"
    ]


# ---- 8. registry names cannot steer importlib ------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("addon: ../x", "addon"),
        ("addon: a.b", "addon"),
        ("addon: 'a..b:C'", "addon"),
        ("addon: 'a:b:c'", "addon"),
        ("addon: ':C'", "addon"),
        ("addon: 'os.path:'", "addon"),
        ("addon: '1pkg:C'", "addon"),
        ("paths: {reference: ../evil}", "paths.reference"),
        ("paths: {candidate: 'harness/paths:X'}", "paths.candidate"),
    ],
)
def test_registry_names_are_plain_names_or_module_class(tmp_path, line, field):
    assert one_error(write(tmp_path, "c.yaml", MINIMAL + line + "\n")).field == field


@pytest.mark.parametrize(
    "line",
    [
        "addon: auto",
        "addon: gemma4",
        "addon: 'pkg.sub_mod:Class_1'",
        "paths: {reference: mlx-vlm, candidate: 'logit_paths:NearTieReference'}",
    ],
)
def test_valid_registry_names_load(tmp_path, line):
    load_case(write(tmp_path, "c.yaml", MINIMAL + line + "\n"))


# ---- 9. any bytes: the good case plus one one-line error ---------------------------------------

FRAGMENTS = [
    "model: ",
    "messages:",
    "{synth: gemma4}",
    "\n",
    "  - ",
    "- ",
    ": ",
    "&a ",
    "*a",
    "<<: ",
    "? ",
    "[",
    "]",
    "{",
    "}",
    ",",
    "'",
    '"',
    "\t",
    "#",
    "---\n",
    "!!python/object/apply:os.system ['true']",
    "!!binary zz",
    "!custom ",
    "2001-13-45",
    "include: ",
    "../x",
    "/etc/passwd",
    "_gemma.yaml",
    SHADOW,
    "id: ../../x",
    "addon: a.b",
    "1" * 5000,
    "~",
    "\u2028",
    "\x85",
]
YAMLISH = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=8)), max_size=40).map(
    "".join
)
HOSTILE = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    YAMLISH.map(str.encode),
    st.integers(1, 60).map(lambda n: "x: &a [1]\n" + "".join(f"y{i}: *a\n" for i in range(n))),
    st.integers(60, 3_000).map(lambda n: "a: " + "[" * n + "]" * n),
    st.integers(60, 3_000).map(lambda n: "a: " + "{b: " * n + "1" + "}" * n),
    st.integers(4301, 20_000).map(lambda n: MINIMAL + "prefill_step_size: " + "7" * n),
    st.sampled_from(["model", "messages", "id", "'a b'", "1", "null"]).map(
        lambda k: f"{k}: 1\n{MINIMAL}{k}: 2\n"
    ),
    st.binary(min_size=1, max_size=20).map(lambda b: MINIMAL.encode() + b"\xff" + b),
)


@settings(
    max_examples=150,
    deadline=2000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(content=HOSTILE)
def test_any_file_is_one_named_error_next_to_a_good_case(tmp_path, content):
    cases = tmp_path / "cases"
    write(cases, "a_good.yaml", MINIMAL)
    bad = write(cases, "z_bad.yaml", content)
    loaded, errors = load_cases([cases])
    assert [c.id for c in loaded] == ["a_good"]
    error = only_error(errors, bad)
    assert len(errors) == 1 and len(error.message) <= MAX_MESSAGE_CHARS
    assert "Traceback" not in str(error)
