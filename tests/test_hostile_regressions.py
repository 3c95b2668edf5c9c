"""Regressions of a hostile review: each test names the defect class it pins down. Fast:
no model is loaded (checkpoints are copied from the session's synthesized cache and
doctored; CLI runs stop before any path session)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import unicodedata
from pathlib import Path

import pytest
from conftest import ROOT

from harness.case_yaml import CaseError
from harness.cases import load_case
from harness.cli import main
from harness.records import Status, Verdict
from harness.runner import RunResult
from harness.synth import ensure_checkpoint

TINY = {"hidden_size": 64, "seed": 0}
STARTED = "2025-01-01T00:00:00+00:00"
TEXT_CASE = "model: {synth: gemma4}\nmessages: [{role: user, content: hi}]\n"


def _write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


def _case_error(path: Path) -> CaseError:
    with pytest.raises(CaseError) as info:
        load_case(path)
    assert "\n" not in str(info.value)
    return info.value


def _checkpoint(root: Path, name: str = "ckpt") -> Path:
    target = root / name
    shutil.copytree(ensure_checkpoint("gemma4", TINY), target)
    return target


def _set_config(model_dir: Path, text: str) -> None:
    (model_dir / "config.json").write_text(text)


def _finishes(function, *args, seconds: float = 20.0):
    """`function(*args)` in a thread: what it returned or raised, or a failure when it is
    still blocked after `seconds` (a FIFO opened for reading waits for a writer forever)."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # noqa: BLE001  (handed back to the test)
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"{function.__name__} blocked for {seconds} s"
    return outcome


# 1. A symlinked report directory ---------------------------------------------------------


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    directory = tmp_path / "victim"
    directory.mkdir()
    (directory / "precious.txt").write_text("keep me")
    return directory


def _assert_untouched(victim: Path) -> None:
    assert [p.name for p in victim.iterdir()] == ["precious.txt"]
    assert (victim / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("planted", ["reports/latest", "reports"])
def test_a_report_dir_reached_through_a_symlink_is_refused(tmp_path, monkeypatch, victim, planted):
    from harness.report_files import UnsafeReportDir, check_report_dir, staged_dir

    project = tmp_path / "project"
    (project / "reports").mkdir(parents=True)
    if planted == "reports":
        shutil.rmtree(project / "reports")
        (victim / "latest").mkdir()
        (victim / "latest" / "precious.txt").write_text("keep me")
        victim = victim / "latest"
        (project / "reports").symlink_to(victim.parent)
    else:
        (project / "reports" / "latest").symlink_to(victim)
    monkeypatch.chdir(project)
    problem = check_report_dir(Path("reports/latest"))
    assert problem and "symbolic link" in problem and "\n" not in problem
    assert check_report_dir(project / "reports" / "latest")  # absolute, inside the cwd
    assert check_report_dir(Path("reports/x/../latest"))
    with pytest.raises(UnsafeReportDir), staged_dir(Path("reports/latest")) as staging:
        (staging / "parity.md").write_text("new")
    _assert_untouched(victim)
    case = _write(project, "case.yaml", TEXT_CASE)
    assert main(["run", str(case), "--report-dir", "reports/latest"]) == 2
    _assert_untouched(victim)


def test_a_symlink_in_the_report_dirs_captures_is_refused(tmp_path, monkeypatch, victim):
    from harness.report_files import check_report_dir

    (tmp_path / "reports" / "latest" / "captures").mkdir(parents=True)
    (tmp_path / "reports" / "latest" / "captures" / "case").symlink_to(victim)
    monkeypatch.chdir(tmp_path)
    assert "symbolic link" in check_report_dir(Path("reports/latest"))


def test_an_absolute_report_dir_below_a_system_symlink_still_works(tmp_path, monkeypatch):
    """/tmp -> /private/tmp on macOS: links above a report dir outside the cwd are fine."""
    from harness.report_files import check_report_dir, staged_dir

    (tmp_path / "private_tmp").mkdir()
    (tmp_path / "tmp").symlink_to(tmp_path / "private_tmp")
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    target = tmp_path / "tmp" / "out" / "latest"
    assert check_report_dir(target) is None
    for text in ("one", "two"):
        with staged_dir(target) as staging:
            (staging / "parity.md").write_text(text)
    assert (tmp_path / "private_tmp" / "out" / "latest" / "parity.md").read_text() == "two"


# 2. Images go to PIL only in raster formats ------------------------------------------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke\n"


@pytest.fixture
def fake_gs(tmp_path: Path) -> tuple[Path, Path]:
    """A `gs` first on PATH that leaves a marker file when anything runs it."""
    bin_dir, marker = tmp_path / "fakebin", tmp_path / "GS_RAN"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f'#!/bin/sh\necho "$*" >> {marker}\n[ "$1" = --version ] && echo 10.0\nexit 1\n')
    gs.chmod(0o755)
    return bin_dir, marker


def test_a_postscript_file_named_png_is_refused_naming_the_image_field(tmp_path, fake_gs):
    (tmp_path / "eps.png").write_bytes(EPS + b"showpage\n%%EOF\n")
    case = load_case(
        _write(
            tmp_path,
            "eps.yaml",
            """
            model: {synth: gemma4}
            messages:
              - role: user
                content: [{type: text, text: hi}, {type: image, image: eps.png}]
            """,
        )
    )
    with pytest.raises(CaseError) as info:
        case.check_images()
    assert info.value.field == "messages.0.content.1.image"
    assert "not a readable image" in str(info.value)
    assert not fake_gs[1].exists()


_OPEN_EPS = """
import sys
from PIL import Image
if sys.argv[2] == "restricted":
    from harness.cases import restrict_image_formats
    restrict_image_formats()
    restrict_image_formats()  # idempotent
try:
    Image.open(sys.argv[1]).load()
except Exception as exc:
    print(type(exc).__name__)
print(sorted(Image.OPEN))
"""


def test_restricted_pil_never_hands_a_file_to_ghostscript(tmp_path, fake_gs):
    bin_dir, marker = fake_gs
    eps = tmp_path / "eps.png"
    eps.write_bytes(EPS + b"showpage\n%%EOF\n")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}

    def open_eps(mode: str) -> str:
        command = [sys.executable, "-c", _OPEN_EPS, str(eps), mode]
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    open_eps("plain")  # the probe works: unrestricted PIL runs the fake gs
    assert marker.exists()
    marker.unlink()
    out = open_eps("restricted")
    assert "UnidentifiedImageError" in out and "'EPS'" not in out and "'PNG'" in out
    assert not marker.exists()


# 3-4. config.json and other checkpoint files, read in the parent -------------------------


@pytest.mark.parametrize(
    "model_type",
    [{"a": 1}, ["gemma4"], 4, None, True, "", "os:system", "x\n::error::y", "..", "a" * 65],
)
def test_an_unusable_model_type_is_a_named_checkpoint_error(tmp_path, model_type):
    from harness.models import CheckpointError, validate_checkpoint
    from harness.paths import PathError
    from harness.paths.loading import model_type_of

    model_dir = _checkpoint(tmp_path)
    config = json.loads((model_dir / "config.json").read_text())
    _set_config(model_dir, json.dumps({**config, "model_type": model_type}))
    with pytest.raises(CheckpointError, match="model_type must be"):
        validate_checkpoint(model_dir)
    with pytest.raises(PathError, match="model_type must be") as info:
        model_type_of(model_dir)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ('{"model_type": "gemma4", "n": ' + "7" * 5000 + "}", "too many digits"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"model_type": "gemma4"', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_a_hostile_config_json_is_a_named_checkpoint_error(tmp_path, config, expected):
    from harness.models import CheckpointError, validate_checkpoint
    from harness.paths import PathError
    from harness.paths.loading import image_token_id_of, model_type_of

    model_dir = _checkpoint(tmp_path)
    path = model_dir / "config.json"
    path.write_bytes(config) if isinstance(config, bytes) else path.write_text(config)
    with pytest.raises(CheckpointError, match=expected) as info:
        validate_checkpoint(model_dir)
    assert len(str(info.value)) < 200
    for reader in (model_type_of, image_token_id_of):
        with pytest.raises(PathError, match=expected):
            reader(model_dir)


def test_config_json_is_read_only_when_regular_and_small(tmp_path):
    from harness.models import CheckpointError, validate_checkpoint
    from harness.paths import PathError
    from harness.paths.loading import model_type_of

    model_dir = _checkpoint(tmp_path)
    config = model_dir / "config.json"
    with config.open("r+b") as handle:  # sparse: 17 MiB of zeros after the real config
        handle.truncate(17 << 20)
    with pytest.raises(CheckpointError, match="16 MiB limit"):
        validate_checkpoint(model_dir)
    config.unlink()
    os.mkfifo(config)
    outcome = _finishes(validate_checkpoint, model_dir)
    assert isinstance(outcome.get("error"), CheckpointError), outcome
    assert "not a regular file" in str(outcome["error"])
    outcome = _finishes(model_type_of, model_dir)
    assert isinstance(outcome.get("error"), PathError), outcome


def test_a_safetensors_fifo_is_refused_without_blocking(tmp_path):
    from harness.models import CheckpointError, validate_checkpoint

    model_dir = _checkpoint(tmp_path)
    os.mkfifo(model_dir / "zz.safetensors")
    outcome = _finishes(validate_checkpoint, model_dir)
    assert isinstance(outcome.get("error"), CheckpointError), outcome
    assert "zz.safetensors" in str(outcome["error"]) and "not a regular file" in str(
        outcome["error"]
    )


def test_an_unreadable_json_beside_the_weights_refuses_the_checkpoint(tmp_path):
    from harness.policy import custom_code_in

    model_dir = _checkpoint(tmp_path)
    assert custom_code_in(model_dir) == []
    os.mkfifo(model_dir / "evil.json")
    (model_dir / "zero.json").symlink_to("/dev/null")  # a device (/dev/zero would be endless)
    (model_dir / "garbage.json").write_text("{not json")  # no loader finds code in it
    outcome = _finishes(custom_code_in, model_dir)
    found = outcome.get("value")
    assert found is not None, outcome
    assert [f.split(" ")[0] for f in found] == ["evil.json", "zero.json"]
    assert all("not a regular file" in f for f in found)


def test_a_run_refuses_a_checkpoint_with_a_fifo_json_and_does_not_hang(tmp_path):
    model_dir = _checkpoint(tmp_path)
    os.mkfifo(model_dir / "evil.json")
    body = f"model: {{path: {model_dir}}}\nmessages: [{{role: user, content: hi}}]\n"
    case = _write(tmp_path, "fifo.yaml", body)
    report = tmp_path / "report"
    command = [sys.executable, "-m", "harness", "run", str(case), "--isolation", "none"]
    done = subprocess.run(
        [*command, "--report-dir", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "evil.json" in done.stdout and "Traceback" not in done.stdout + done.stderr


# 5. A case that checks nothing ----------------------------------------------------------

NO_GATE = "{check: exact, gate: false}"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (
            "tolerances: {input_ids: [], per_layer_inputs: [], embeddings: [],"
            " attention_mask: [], layers: [], logits: []}",
            "tolerances",
        ),
        (
            f"tolerances: {{input_ids: {NO_GATE}, embeddings: {NO_GATE}, logits: {NO_GATE},"
            " layers: {check: stats}}",
            "tolerances",
        ),
        ("profile: image\ntolerances: {input_ids: [], embeddings: [], logits: []}", "tolerances"),
        ("paths: {reference: mlx-vlm, candidate: mlx-vlm}", "paths"),
        ("paths: {reference: unified, candidate: unified}", "paths"),
        ("paths: {candidate: mlx-vlm}", "paths"),
        ("paths: {reference: 'harness.paths.unified:UnifiedSession'}", "paths"),
        ("tolerances: {input_ids: {check: allclose, atol: .inf}}", "tolerances.input_ids.0.atol"),
        ("tolerances: {embeddings: {check: ulp, ulps: .inf}}", "tolerances.embeddings.0.ulps"),
        ("tolerances: {layers: {check: stats, max_abs: .inf}}", "tolerances.layers.0.max_abs"),
        ("tolerances: {logits: {check: kl, max: .nan}}", "tolerances.logits.0.max"),
        ("tolerances: {logits: {check: topk, prob_rtol: .inf}}", "tolerances.logits.0.prob_rtol"),
        ("tolerances: {logits: {check: jaccard, min: 0}}", "tolerances.logits.0.min"),
        ("tolerances: {logits: {check: max_delta_p, max: 1}}", "tolerances.logits.0.max"),
    ],
)
def test_a_case_that_would_pass_unchecked_is_a_config_error(tmp_path, extra, field):
    error = _case_error(_write(tmp_path, "c.yaml", TEXT_CASE + extra + "\n"))
    assert error.field == field, str(error)


def test_a_case_with_one_gating_check_still_loads(tmp_path):
    extra = "tolerances: {input_ids: [], embeddings: [], logits: {check: top1}}\n"
    case = load_case(_write(tmp_path, "c.yaml", TEXT_CASE + extra))
    assert [s.check for s in case.checks()["logits"]] == ["top1"]


# 6. `mlx-parity list` prints case data literally ------------------------------------------


def test_list_prints_case_data_without_markup(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal: links would be live
    monkeypatch.setenv("COLUMNS", "400")
    _write(tmp_path, "a.yaml", 'model: {path: "[/x]"}\nmessages: [{role: user, content: hi}]\n')
    _write(tmp_path, "b.yaml", TEXT_CASE + "markers: ['[link=http://evil]click[/link]']\n")
    _write(tmp_path, "c.yaml", "model: {synth: [link=http://evil]x[/link]\n")
    image = "[{type: image, image: ../../etc/passwd}]"  # an error of its own, listed last
    _write(tmp_path, "d.yaml", TEXT_CASE.replace("content: hi", f"content: {image}"))
    assert main(["list", str(tmp_path)]) == 2  # c.yaml is malformed
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text and "MarkupError" not in text
    assert "\x1b]8;" not in text  # no OSC 8 hyperlink
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out.out)
    assert "path:[/x]" in plain and "[link=http://evil]click[/link]" in plain
    assert re.search(r"error .*d\.yaml: messages: image '\.\./\.\./etc/passwd' escapes", plain)


# 7. One-line named errors at load instead of run-time exceptions ------------------------


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("model: {hf: ../../../etc}", "model.hf"),
        ("model: {hf: 'a/b/c'}", "model.hf"),
        ("model: {hf: 'org--x/y'}", "model.hf"),
        ("model: {hf: google/gemma, revision: ../../refs/x}", "model.revision"),
        ("max_size: [0, 0]", "max_size.0"),
        ("max_size: [640, -1]", "max_size.1"),
        ("chat_template_kwargs: {add_generation_prompt: false}", "chat_template_kwargs"),
        ("chat_template_kwargs: {messages: [], tokenize: true}", "chat_template_kwargs"),
        ("chat_template_kwargs: {images: [/etc/passwd]}", "chat_template_kwargs"),
    ],
)
def test_bad_values_are_named_config_errors_at_load(tmp_path, extra, field):
    body = "messages: [{role: user, content: hi}]\n"
    text = (extra + "\n" + body) if extra.startswith("model") else TEXT_CASE + extra + "\n"
    error = _case_error(_write(tmp_path, "c.yaml", text))
    assert error.field == field, str(error)


def test_hub_ids_that_load_still_load(tmp_path):
    for repo in ("google/gemma-3-4b-it", "gpt2", "mlx-community/Qwen2.5-VL-3B-Instruct-4bit"):
        text = f"model: {{hf: {repo}, revision: refs/pr/1}}\n" + TEXT_CASE.split("\n", 1)[1]
        assert load_case(_write(tmp_path, "c.yaml", text)).model.hf == repo


def test_an_invalid_repo_id_at_run_time_is_a_case_error(tmp_path):
    from harness.cases import CaseSpec, HubModel
    from harness.models import resolve_model

    case = load_case(_write(tmp_path, "c.yaml", TEXT_CASE))
    bad = case.model_copy(update={"model": HubModel.model_construct(hf="../../../etc")})
    assert isinstance(bad, CaseSpec)
    with pytest.raises(CaseError) as info:
        resolve_model(bad)
    assert info.value.field == "model.hf"


# 8. Invisible and reordering characters ---------------------------------------------------

BIDI = "\u202eevil\u200f \u2066x\u2069 \u200bz\ufeff \U000e0041 \u061c \ud800 \u2028 \x9b"


def test_every_format_character_counts_as_invisible():
    from harness.case_yaml import INVISIBLE

    categories = {"Cf", "Cs"}
    missing = [
        f"U+{code:04X}"
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in categories and not INVISIBLE.match(chr(code))
    ]
    assert not missing


def _visible(text: str, allowed: str = "") -> bool:
    return not any(
        unicodedata.category(c) in ("Cf", "Cs", "Zl", "Zp") and c not in allowed for c in text
    )


def test_sanitizers_drop_bidi_and_zero_width_characters():
    from harness.case_yaml import one_line
    from harness.console import _clean
    from harness.report_junit import xml_text
    from harness.report_md import ZWSP, md_text

    text = "@everyone " + BIDI
    md = md_text(text)
    assert _visible(md, allowed=ZWSP) and md.startswith("@" + ZWSP + "everyone")
    assert md.count(ZWSP) == 1  # only the deliberate one, after '@'
    assert _visible(xml_text(text)) and "\ufffd" in xml_text(text)
    cleaned = _clean(text)
    assert _visible(cleaned) and cleaned.isprintable()
    escaped = one_line(text)
    assert _visible(escaped) and escaped.isprintable() and "\\u202e" in escaped


def test_reports_and_console_carry_no_trojan_source(tmp_path, capsys):
    from harness.console import Progress
    from harness.report import write_reports
    from harness.report_md import ZWSP

    verdict = Verdict("bidi", "bidi.yaml", Status.ERROR, reason=BIDI, architecture="x\u202e")
    outputs = write_reports(RunResult((verdict,), STARTED, STARTED), tmp_path / "r", None, "never")
    assert _visible(outputs["markdown"].read_text(encoding="utf-8"), allowed=ZWSP)
    assert _visible(outputs["junit"].read_text(encoding="utf-8"))
    progress = Progress(interactive=False)
    progress("verdict", verdict)
    progress("error", f"id\u202e: {BIDI}")
    assert _visible(capsys.readouterr().out)


# 9. A second SIGTERM while the run winds down --------------------------------------------


@pytest.fixture
def restored_signals():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def test_only_the_first_signal_interrupts(restored_signals):
    from harness.cli import _interrupt_on_sigterm

    _interrupt_on_sigterm()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    try:
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
            os.kill(os.getpid(), number)
            time.sleep(0.05)  # delivered: nothing raised
    except KeyboardInterrupt:
        pytest.fail("a second signal interrupted the wind-down")


def test_a_second_sigterm_during_cleanup_still_writes_the_report(
    tmp_path, monkeypatch, restored_signals
):
    from harness import runner, worker

    def interrupted_group(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not interrupt")

    def release_spare() -> None:  # the second SIGTERM (and a Ctrl-C) arrive in cleanup
        for number in (signal.SIGTERM, signal.SIGINT):
            os.kill(os.getpid(), number)
            time.sleep(0.05)

    monkeypatch.setattr(runner, "_run_group", interrupted_group)
    monkeypatch.setattr(worker, "release_spare", release_spare)
    case = _write(tmp_path, "c.yaml", TEXT_CASE)
    report = tmp_path / "report"
    try:
        code = main(["run", str(case), "--isolation", "none", "--report-dir", str(report)])
    except KeyboardInterrupt:
        pytest.fail("a second SIGTERM escaped the CLI: no report")
    assert code == 130
    assert "INCOMPLETE" in (report / "parity.md").read_text()
