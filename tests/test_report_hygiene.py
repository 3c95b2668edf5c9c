"""The report is safe to post for an untrusted pull request and honest in a CI log: Markdown
renders every case-supplied text literally, JUnit XML stays valid and lists only gating
failures, report directories are swapped in whole with normal permissions, an unwritable
target is caught before any case runs, and the figures show what gates. Records are built
by hand: no model is loaded."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.dom.minidom
import xml.sax
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from harness import plots, report
from harness.records import CheckResult, Status, Verdict
from harness.report import junit_xml, markdown, to_frame, write_reports
from harness.runner import RunResult

HOSTILE = (
    "<img src=x onerror=alert(1)>",
    "<details><summary>x</summary>",
    "[click](http://evil.example/x)",
    "![pixel](https://evil.example/p.png)",
    "see https://evil.example and www.evil.example",
    "@org/team @someone",
    "a | b || c",
    "line\nbreak\r\nagain",
    "`code` ``` fence",
    "\\| escaped pipe \\",
    "*bold* _em_ ~~strike~~ $x$ #123",
    "boom\x1b[31m\x00\x07\x0b\x0c\ud800",
)
EVIL = " ".join(HOSTILE)
STARTED = "2025-01-01T00:00:00+00:00"


def _check(
    case_id: str,
    stage: str,
    metric: str,
    value: float,
    threshold: float,
    gating: bool = True,
    check: str = "stats",
    detail: str = "",
) -> CheckResult:
    return CheckResult(
        case_id, stage, check, metric, value, threshold, value <= threshold, value, detail, gating
    )


def _run(*verdicts: Verdict, started: str = STARTED) -> RunResult:
    return RunResult(tuple(verdicts), started, started, {"commit": "abc123"})


def _layer_checks(case_id: str, values: list[float], threshold: float = 1e-3) -> list:
    """max_abs_diff (gating) and nmse (diagnostic) per layer; the last two layers compared
    at the last position only, as for Gemma 4's KV-shared layers."""
    checks = []
    for index, value in enumerate(values):
        prefix = "last_position_" if index >= len(values) - 2 else ""
        stage = f"layer.{index}"
        checks.append(_check(case_id, stage, prefix + "max_abs_diff", value, threshold))
        checks.append(_check(case_id, stage, prefix + "nmse", value / 10, 1.0, gating=False))
    return checks


def _diverging(case_id: str = "diverges", **extra) -> Verdict:
    checks = [
        _check(case_id, "embeddings", "max_abs_diff", 0.0, 0.0, check="exact"),
        *_layer_checks(case_id, [0.0, 0.0, 0.01, 0.02, 0.05]),
    ]
    return Verdict(
        case_id,
        f"{case_id}.yaml",
        Status.FAIL,
        tuple(checks),
        "layer.2",
        reference="mlx-vlm",
        candidate="unified",
        image_token_errors=(np.linspace(0, 1, 63).reshape(7, 9),),
        **extra,
    )


def _passing(case_id: str = "passes", **extra) -> Verdict:
    checks = [
        _check(case_id, "embeddings", "max_abs_diff", 0.0, 0.0, check="exact"),
        *_layer_checks(case_id, [0.0] * 5),
    ]
    return Verdict(
        case_id,
        f"{case_id}.yaml",
        Status.PASS,
        tuple(checks),
        reference="mlx-vlm",
        candidate="unified",
        image_token_errors=(np.zeros((7, 9)),),
        **extra,
    )


# 1. Markdown ---------------------------------------------------------------------------


def _unescaped(line: str, char: str) -> list[int]:
    """Positions of `char` not preceded by an odd number of backslashes."""
    found = []
    for match in re.finditer(re.escape(char), line):
        backslashes = len(line[: match.start()]) - len(line[: match.start()].rstrip("\\"))
        if backslashes % 2 == 0:
            found.append(match.start())
    return found


def _assert_inert(line: str) -> None:
    """No HTML, link, image, autolink or mention anywhere in a rendered line."""
    assert "<" not in line
    assert not re.search(r"[@#]\w", line), line
    assert "](" not in line
    assert "://" not in line and not re.search(r"(?i)\bwww\.", line)


def _assert_literal(line: str) -> None:
    """An escaped text: inert, one line, no table cell or code span opened or closed."""
    _assert_inert(line)
    assert not _unescaped(line, "|"), line
    assert not _unescaped(line, "`"), line
    assert len(line.splitlines()) <= 1 and "\n" not in line and "\r" not in line


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.one_of(st.text(), st.sampled_from(HOSTILE)), max_size=6).map("".join),
)
def test_md_text_renders_any_string_as_one_literal_line(text):
    from harness.report_md import md_code, md_text

    _assert_literal(md_text(text))
    code = md_code(text)
    if code.startswith("`"):  # only plain names get a code span
        assert re.fullmatch(r"`[A-Za-z0-9_.\-]+`", code)
    else:
        _assert_literal(code)


def test_markdown_of_a_hostile_run_is_inert():
    diverged = Verdict(
        EVIL,
        "evil.yaml",
        Status.FAIL,
        (_check(EVIL, EVIL, EVIL, 1.0, 0.0, check=EVIL, detail=EVIL),),
        first_divergence=EVIL,
        reason=EVIL,
    )
    errored = Verdict("errored", "e.yaml", Status.ERROR, reason=EVIL)
    text = markdown(_run(diverged, errored, _passing()))
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 3  # header and one row per case: no line broke
    for row in rows:
        assert len(_unescaped(row, "|")) == 6, row
    own_tags = re.compile(r"<details><summary>all \d+ cases</summary>|</details>")
    for line in text.splitlines():
        if not own_tags.fullmatch(line):  # the collapsed table's own tags, no case text
            _assert_inert(line)
    assert "onerror" in text and "alert" in text  # shown, as text
    assert "`passes`" not in text and "| passes | pass |" in text


# 2. JUnit ------------------------------------------------------------------------------

_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def test_junit_strips_control_characters_and_stays_valid(tmp_path):
    reason = "boom\x1b[31m\x00 red\x1b[0m\x07\ud800"
    run = _run(
        Verdict("err\x1b[1m\x00", "e.yaml", Status.ERROR, reason=reason),
        Verdict("skipped", "s.yaml", Status.SKIP, reason=reason),
        _diverging(architecture="gemma4\x00"),
    )
    path = tmp_path / "junit.xml"
    write_reports(run, tmp_path / "report", junit=path, figures="never")
    text = path.read_text(encoding="utf-8")
    assert not _XML_ILLEGAL.search(text)
    suite = ET.parse(path).getroot()
    xml.dom.minidom.parse(str(path))
    parser = xml.sax.make_parser()
    parser.setFeature(xml.sax.handler.feature_external_ges, False)
    parser.parse(str(path))
    error = suite.find("./testcase/error")
    assert error.get("message") == "boom red"
    assert suite.find("./testcase").get("name") == "err"
    assert ET.fromstring(junit_xml(run)).get("errors") == "1"


def test_junit_times_classnames_and_gating_failures_only():
    gating_fail = _check("mixed", "logits", "top5_ids_order_mismatch", 2.0, 0.0, check="topk")
    diagnostic_fail = _check("mixed", "layer.1", "max_abs_diff", 0.5, 0.0, gating=False)
    diagnostic_kl = _check("mixed", "logits", "kl_ref_test", 0.3, 1e-3, gating=False, check="kl")
    mixed = Verdict(
        "mixed",
        "m.yaml",
        Status.FAIL,
        (diagnostic_fail, gating_fail, diagnostic_kl),
        first_divergence="layer.1",
        duration=2.5,
        architecture="gemma4",
    )
    unknown = _passing(duration=0.25)
    suite = ET.fromstring(junit_xml(_run(mixed, unknown)))
    first, second = suite.findall("./testcase")
    assert (first.get("classname"), first.get("time")) == ("mlx-parity.gemma4", "2.500")
    assert (second.get("classname"), second.get("time")) == ("mlx-parity", "0.250")
    assert float(suite.get("time")) == pytest.approx(2.75)
    failure = first.find("failure")
    lines = failure.text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[gating]")
    assert "top5_ids_order_mismatch" in lines[0]
    assert "kl_ref_test" not in failure.text and "layer.1" not in failure.text
    assert "first at logits" in failure.get("message")


# 3. Files ------------------------------------------------------------------------------


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_report_files_get_normal_permissions(tmp_path, umask_022):
    out = tmp_path / "report"
    junit = tmp_path / "ci" / "junit.xml"
    write_reports(_run(_diverging(), _passing()), out, junit=junit)
    paths = [out, *out.rglob("*"), junit]
    assert (out / "figures" / "layers.png").exists()
    for path in paths:
        mode = path.stat().st_mode & 0o777
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))
    assert sorted(p.name for p in junit.parent.iterdir()) == ["junit.xml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ci", "report"]  # no staging left


def _run_id(out: Path) -> set[str]:
    """The run a report directory's files come from, per file (case ids name the run)."""
    ids = {
        "parquet": frozenset(pd.read_parquet(out / "parity.parquet").case_id),
        "csv": frozenset(pd.read_csv(out / "parity.csv").case_id),
        "tokens": frozenset(pd.read_parquet(out / "image_tokens.parquet").case_id),
        "junit": frozenset(
            c.get("name") for c in ET.parse(out / "parity.junit.xml").getroot().iter("testcase")
        ),
        "markdown": frozenset(
            m.group(1)
            for m in re.finditer(r"^\| (run\w+) \|", (out / "parity.md").read_text(), re.M)
        ),
    }
    started = set(pd.read_parquet(out / "parity.parquet").run_started)
    timestamp = ET.parse(out / "parity.junit.xml").getroot().get("timestamp")
    assert started == {timestamp}
    return set(ids.values())


def test_concurrent_writes_leave_one_consistent_report(tmp_path):
    out = tmp_path / "report"
    runs = [
        _run(_diverging(f"run{n}_a"), _passing(f"run{n}_b"), started=f"2025-01-0{n + 1}T00:00:00")
        for n in range(3)
    ]
    errors: list[BaseException] = []

    def write(run: RunResult, barrier: threading.Barrier) -> None:
        try:
            barrier.wait()
            write_reports(run, out, figures="never")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    for _ in range(4):
        barrier = threading.Barrier(len(runs))
        threads = [threading.Thread(target=write, args=(run, barrier)) for run in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert len(_run_id(out)) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_failed_write_leaves_the_previous_report_whole(tmp_path, monkeypatch):
    out = tmp_path / "report"
    write_reports(_run(_passing("run1_ok")), out, figures="never")

    def broken(run):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report, "markdown", broken)
    with pytest.raises(RuntimeError):
        write_reports(_run(_passing("run2_ok"), started="2025-02-01T00:00:00"), out)
    assert _run_id(out) == {frozenset({"run1_ok"})}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_captures_of_this_run_are_kept_and_stale_ones_dropped(tmp_path):
    out = tmp_path / "report"
    capture = out / "captures" / "case" / "reference.safetensors"
    capture.parent.mkdir(parents=True)
    capture.write_bytes(b"tensors")
    old = time.time() - 3600
    for path in (capture, capture.parent, capture.parent.parent):
        os.utime(path, (old, old))
    write_reports(_run(_passing(), started=_iso(time.time())), out, figures="never")
    assert not (out / "captures").exists()  # written before this run started

    started = _iso(time.time() - 5)
    capture.parent.mkdir(parents=True)
    capture.write_bytes(b"tensors")
    write_reports(_run(_passing(), started=started), out, figures="never")
    assert capture.read_bytes() == b"tensors"
    assert (out / "parity.parquet").exists()


def test_a_symlinked_report_dir_is_refused_and_its_target_untouched(tmp_path):
    from harness.report_files import UnsafeReportDir

    real = tmp_path / "real"
    link = tmp_path / "latest"
    real.mkdir()
    (real / "precious.txt").write_text("keep")
    link.symlink_to(real)
    with pytest.raises(UnsafeReportDir):
        write_reports(_run(_passing("run1_ok")), link, figures="never")
    assert link.is_symlink() and (real / "precious.txt").read_text() == "keep"


def _iso(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


# 4. Report directory check -------------------------------------------------------------


def test_check_report_dir_accepts_new_and_existing_directories(tmp_path):
    from harness.report_files import check_report_dir

    assert check_report_dir(tmp_path / "new" / "nested") is None
    assert check_report_dir(tmp_path) is None
    write_reports(_run(_passing()), tmp_path / "done", figures="never")
    assert check_report_dir(tmp_path / "done") is None


def test_check_report_dir_rejects_a_file(tmp_path):
    from harness.report_files import check_report_dir

    file = tmp_path / "report"
    file.write_text("not a directory")
    for path in (file, file / "sub"):
        message = check_report_dir(path)
        assert message and "\n" not in message and "not a" in message
    assert check_report_dir(tmp_path / "ok", junit=tmp_path) is not None  # junit is a dir


_NOBODY_CHECK = """
import os, sys
from harness.report_files import check_report_dir
os.setgid(65534); os.setuid(65534)
message = check_report_dir(sys.argv[1])
print(message or "")
"""


def _check_as_nobody(path: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _NOBODY_CHECK, str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    if result.returncode:
        pytest.skip(f"cannot run the check as an unprivileged user: {result.stderr[-300:]}")
    return result.stdout.strip()


@pytest.mark.parametrize("target", ["report", "report/new"])
def test_check_report_dir_rejects_a_read_only_directory(target):
    from harness.report_files import check_report_dir

    base = Path(tempfile.mkdtemp(prefix="mlx-parity-ro-"))
    try:
        os.chmod(base, 0o755)
        read_only = base / "report"
        read_only.mkdir()
        os.chmod(read_only, 0o555)
        path = base / target
        if os.access(read_only, os.W_OK):  # root: permission bits do not apply
            if os.geteuid() != 0:
                pytest.skip("this user can write a 0o555 directory")
            message = _check_as_nobody(path)
        else:
            message = check_report_dir(path)
        assert message and "\n" not in message and "not writable" in message
    finally:
        os.chmod(base / "report", 0o755)
        shutil.rmtree(base)


# 5. Figures ----------------------------------------------------------------------------


def test_auto_figures_draw_only_the_diverging_cases(tmp_path, monkeypatch):
    drawn: list[set[str]] = []
    real = plots.plot_layers

    def spy(frame, path):
        drawn.append(set(frame.case_id))
        return real(frame, path)

    monkeypatch.setattr(plots, "plot_layers", spy)
    run = _run(_diverging(), _passing())
    write_reports(run, tmp_path / "auto")
    assert drawn == [{"diverges"}]
    assert sorted(p.name for p in (tmp_path / "auto" / "figures").iterdir()) == [
        "image_tokens.diverges.png",
        "layers.png",
    ]
    write_reports(run, tmp_path / "always", figures="always")
    assert drawn[-1] == {"diverges", "passes"}
    assert (tmp_path / "always" / "figures" / "image_tokens.passes.png").exists()
    write_reports(_run(_passing()), tmp_path / "none")
    assert not list((tmp_path / "none" / "figures").iterdir())


def test_layer_figure_shows_gate_floor_and_last_position(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    verdicts = [_diverging(f"case ${n}$ \\frac{{") for n in range(30)]  # mathtext-hostile
    frame = to_frame(_run(*verdicts))
    fig = plots.layer_figure(frame)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    abs_ax, nmse_ax = fig.axes[:2]
    for ax in (abs_ax, nmse_ax):
        assert ax.get_yscale() == "log" and ax.get_ylim()[0] > 0
        assert all((np.asarray(line.get_ydata()) > 0).all() for line in ax.get_lines())
        assert ax.get_legend() is None
    gates = [line for line in abs_ax.get_lines() if line.get_linestyle() == "--"]
    assert [line.get_ydata()[0] for line in gates] == [pytest.approx(1e-3)]
    assert not [line for line in nmse_ax.get_lines() if line.get_linestyle() == "--"]
    hollow = [line for line in abs_ax.get_lines() if line.get_markerfacecolor() == "none"]
    assert hollow and all(list(np.asarray(line.get_xdata())) == [3, 4] for line in hollow)
    (legend,) = fig.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert "hollow: last position only" in labels
    assert any("gating threshold" in label for label in labels)
    box = legend.get_window_extent(renderer)
    assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in fig.axes)
    assert plots.plot_layers(frame, tmp_path / "layers.png")


def test_image_heatmaps_are_titled_by_file_name():
    verdict = _diverging(image_names=("cases/images/photo_exif_6.jpg",))
    fig = plots.image_token_figure(verdict)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["photo_exif_6.jpg"]
    table = plots.image_token_table((verdict, _passing()))
    assert set(table.image_name) == {"photo_exif_6.jpg", "image 0"}


# 6. Notebook ---------------------------------------------------------------------------


def test_stage_figure_gives_each_metric_its_own_axis():
    checks = (
        _check("mixed", "embeddings", "max_ulp_diff", 3.0, 1.0, check="ulp"),
        _check("mixed", "input_ids", "max_abs_diff", 0.0, 0.0, check="exact"),
        _check("mixed", "logits", "max_abs_diff", 0.25, 0.0, check="exact"),
        _check("mixed", "logits", "kl_ref_test", 0.01, 1e-3, gating=False, check="kl"),
    )
    frame = to_frame(_run(Verdict("mixed", "m.yaml", Status.FAIL, checks, "embeddings")))
    fig = plots.stage_figure(frame)
    visible = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert sorted(ax.get_title() for ax in visible) == [
        "kl_ref_test",
        "max_abs_diff",
        "max_ulp_diff",
    ]


def test_notebook_executes_on_a_hand_built_report(tmp_path, monkeypatch):
    import nbclient
    import nbformat

    run = _run(_diverging(image_names=("a$b$.png",)), _passing(), Verdict("e", "e", Status.ERROR))
    outputs = write_reports(run, tmp_path / "report")
    monkeypatch.setenv("MLX_PARITY_REPORT", str(outputs["parquet"]))
    notebook = nbformat.read(ROOT / "reports" / "parity.ipynb", as_version=4)
    assert "stage_figure(frame)" in "".join(c.source for c in notebook.cells)
    nbclient.NotebookClient(
        notebook,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "reports")}},
    ).execute()
    images = [
        o
        for c in notebook.cells
        for o in c.get("outputs", [])
        if o.output_type == "display_data" and "image/png" in o.get("data", {})
    ]
    assert len(images) >= 3  # per-stage panels, per-layer plot, a heatmap


def test_an_all_bit_exact_layer_figure_draws_without_warnings():
    """Every layer 0 under an exact gate (threshold 0): one y value on a log axis, which
    matplotlib would otherwise warn about on every passing `make parity`."""
    import warnings

    checks = _layer_checks("exact", [0.0] * 5, threshold=0.0)
    passing = Verdict(
        "exact", "exact.yaml", Status.PASS, tuple(checks), reference="a", candidate="b"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figure = plots.layer_figure(to_frame(_run(passing)))
    assert figure is not None
    for ax in figure.axes[: len(plots.LAYER_METRICS)]:
        low, high = ax.get_ylim()
        assert 0 < low < high
