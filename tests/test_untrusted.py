"""Running the gate on an untrusted pull request: a case file names code only when the
person running the gate allowed it, a checkpoint's code runs only when both the case and
the command line say so, and every exit is honest. Each hostile input is run for real and
the test asserts that nothing was imported, called or written (marker files)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from conftest import CASES, ROOT, run_cli

from harness.cli import main
from harness.synth import ensure_checkpoint

TINY = {"hidden_size": 64, "logit_scale": 4.0, "seed": 0}
IMAGE = CASES / "images" / "red_square_400x300.png"


def _case(directory: Path, name: str, extra: str = "", image: bool = True) -> Path:
    """A self-contained case file (no include) on the tiny synthesized Gemma 4."""
    content = (
        f"[{{type: image, image: {IMAGE}}}, {{type: text, text: Describe it.}}]"
        if image
        else "'Hello there, how are you?'"
    )
    path = directory / f"{name}.yaml"
    path.write_text(
        f"model: {{synth: gemma4, options: {json.dumps(TINY)}}}\n"
        "profile: exact\n"
        f"messages: [{{role: user, content: {content}}}]\n" + textwrap.dedent(extra)
    )
    return path


def _report(directory: Path) -> pd.DataFrame:
    return pd.read_parquet(directory / "parity.parquet")


# --- 1. no import or call named by a case file unless allowed ---------------------------


def test_a_case_cannot_call_a_library_function_as_a_path(tmp_path):
    victim = tmp_path / "victim"
    shutil.copytree(ensure_checkpoint("gemma4", TINY), victim)
    case = tmp_path / "rmtree.yaml"
    case.write_text(
        f"model: {{path: {victim}}}\npaths: {{candidate: 'shutil:rmtree'}}\n"
        "messages: [{role: user, content: hi}]\n"
    )
    report = tmp_path / "r"
    assert main(["run", str(case), "--report-dir", str(report)]) == 2
    assert (victim / "config.json").exists()
    reason = _report(report).reason.iloc[0]
    assert "paths.candidate" in reason and "--allow-import shutil" in reason
    # Even when allowed, a function is not a path session: refused before any call.
    assert main(["run", str(case), "--report-dir", str(report), "--allow-import", "shutil"]) == 2
    assert (victim / "config.json").exists()
    assert "not a class" in _report(report).reason.iloc[0]


def test_a_module_beside_the_cases_is_never_imported(tmp_path):
    """`addon: cases.evil:X` with cases/evil.py (the current directory is on sys.path
    under `python -m harness`): a config error, and neither the package nor the module
    runs."""
    project = tmp_path / "project"
    cases = project / "cases"
    cases.mkdir(parents=True)
    marker = tmp_path / "imported"
    code = f"open({str(marker)!r}, 'a').write(__name__)\nclass X:\n    pass\n"
    (cases / "__init__.py").write_text(code)
    (cases / "evil.py").write_text(code)
    _case(cases, "evil_addon", "addon: 'cases.evil:X'\n")
    _case(cases, "evil_path", "paths: {candidate: 'cases.evil:X'}\n")
    result = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--report-dir", str(tmp_path / "r")],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert not marker.exists()
    frame = _report(tmp_path / "r")
    assert (frame.status == "error").all()
    assert set(frame.reason.str.extract(r": (addon|paths\.candidate): ")[0]) == {
        "addon",
        "paths.candidate",
    }


def test_allowed_by_environment_variable_and_by_entry_point(tmp_path, monkeypatch):
    package = tmp_path / "site"
    (package / "engine_addons").mkdir(parents=True)
    (package / "engine_addons" / "__init__.py").write_text(
        "from harness.addons.gemma4 import AddOn as _Bundled\n\n"
        "class WrappedAddOn(_Bundled):\n    pass\n"
    )
    dist = package / "engine_addons-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: engine-addons\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[mlx_parity.addons]\nengine_gemma4 = engine_addons:WrappedAddOn\n"
    )
    by_name = _case(tmp_path, "by_entry_point", "addon: engine_gemma4\n")
    by_value = _case(tmp_path, "by_value", "addon: 'engine_addons:WrappedAddOn'\n")
    result = run_cli("run", by_name, by_value, "--report-dir", tmp_path / "r", pythonpath=package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(_report(tmp_path / "r").status) == {"pass"}


def test_environment_variable_allows_a_module(tmp_path, monkeypatch):
    from harness.policy import ImportPolicy

    monkeypatch.setenv("MLX_PARITY_ALLOW_IMPORT", "engine_addons, mutants")
    policy = ImportPolicy.from_sources(["other"])
    assert policy.allows_module("engine_addons.gemma4")
    assert policy.allows_module("mutants") and policy.allows_module("other.sub")
    assert not policy.allows_module("engine_addons_evil")
    assert not policy.allows_module("shutil")
    with pytest.raises(ValueError, match="module names"):
        ImportPolicy.from_sources(["../evil"])


def test_registry_names_cannot_reach_other_modules():
    from harness.addons import AddOnError, check_addon_name

    for name in ("../paths", "gemma4.evil", "paths.native", "__init__"):
        with pytest.raises(AddOnError):
            check_addon_name(name, "gemma4")


# --- 2. trust_remote_code honoured everywhere -------------------------------------------


def _checkpoint_with_code(root: Path, marker: Path) -> Path:
    """A checkpoint whose tokenizer, processor and config ask transformers to run a file
    that writes `marker` when imported."""
    model = root / "custom_code"
    shutil.copytree(ensure_checkpoint("gemma4", TINY), model)
    (model / "evil_code.py").write_text(
        f"open({str(marker)!r}, 'a').write('ran\\n')\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"

    )
    for name, entry in (
        ("tokenizer_config.json", {"AutoTokenizer": ["evil_code.EvilTokenizer", None]}),
        ("processor_config.json", {"AutoProcessor": "evil_code.EvilTokenizer"}),
    ):
        path = model / name
        data = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**data, "auto_map": entry}))
    return model


def test_checkpoint_code_runs_only_when_case_and_command_line_allow_it(tmp_path):
    marker = tmp_path / "remote_code_ran"
    model = _checkpoint_with_code(tmp_path, marker)
    body = f"model: {{path: {model}}}\nmessages: [{{role: user, content: hi there}}]\n"
    refused = tmp_path / "refused.yaml"
    refused.write_text(body + "paths: {reference: mlx-vlm, candidate: mlx-lm}\n")
    asks = tmp_path / "asks.yaml"
    asks.write_text(body + "trust_remote_code: true\n")
    report = tmp_path / "r"
    assert main(["run", str(refused), str(asks), "--report-dir", str(report)]) == 2
    assert not marker.exists()
    reasons = _report(report).set_index("case_id").reason
    assert "model: the checkpoint carries its own code" in reasons["refused"]
    assert "trust_remote_code: " in reasons["asks"] and "--trust-remote-code" in reasons["asks"]
    # Both sides allow it: the code runs (this is what the refusals above prevented).
    main(["run", str(asks), "--report-dir", str(report), "--trust-remote-code"])
    assert marker.exists()


LOADERS = {
    # An engine add-on asking for the code, as mlx-vlm's own helpers do.
    "load_processor": "load_processor(model, add_detokenizer=True, trust_remote_code=True)",
    # The bundled add-on does not ask (it passes the gate's decision, False).
    "AddOn": "AddOn(model)",
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_loaders_asking_for_checkpoint_code_still_run_nothing(tmp_path, loader):
    """Under the gate's guard a loader called with trust_remote_code=True runs nothing
    of the checkpoint's own code; the bundled add-on does not even ask."""
    marker = tmp_path / "remote_code_ran"
    model = _checkpoint_with_code(tmp_path, marker)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from harness.policy import remote_code, RemoteCodeRefused
        from mlx_vlm.utils import load_processor
        from harness.addons.gemma4 import AddOn
        model = Path({str(model)!r})
        with remote_code(False):
            try:
                {LOADERS[loader]}
                print("loaded without its code")
            except RemoteCodeRefused as exc:
                print("refused:", type(exc).__name__)
    """)
    (tmp_path / "load.py").write_text(script)
    result = subprocess.run(
        [sys.executable, str(tmp_path / "load.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    expected = "loaded without its code" if loader == "AddOn" else "refused:"
    assert expected in result.stdout, f"{result.returncode}: {result.stdout}{result.stderr}"
    assert not marker.exists()


# --- 7, 8. honest exits ------------------------------------------------------------------


def test_nothing_compared_is_not_a_pass(tmp_path):
    skipped = tmp_path / "skipped.yaml"
    skipped.write_text("model: {hf: nobody/not-cached}\nmessages: [{role: user, content: hi}]\n")
    report = tmp_path / "r"
    assert main(["run", str(skipped), "--report-dir", str(report)]) == 5
    assert main(["run", str(skipped), "--report-dir", str(report), "--strict"]) == 1
    text = _case(tmp_path, "text", image=False)
    assert main(["run", str(skipped), str(text), "--report-dir", str(report)]) == 0
    assert main(["run", str(skipped), str(text), "--report-dir", str(report), "--strict"]) == 1
    assert main(["run", str(text), "--report-dir", str(report), "-k", "nomatch"]) == 5


EXITING_ADDONS = textwrap.dedent("""
    import os
    import sys

    from harness.addons.gemma4 import AddOn


    class SysExit(AddOn):
        def compute_embeddings(self, *args, **kwargs):
            sys.exit(0)


    class OsExit(AddOn):
        def compute_embeddings(self, *args, **kwargs):
            os._exit(0)


    class SysExitWhileLoading(AddOn):
        def __init__(self, model_path):
            sys.exit(0)
""")


def test_an_addon_exiting_in_process_is_a_failed_case(tmp_path):
    (tmp_path / "exiting.py").write_text(EXITING_ADDONS)
    names = ("SysExit", "OsExit", "SysExitWhileLoading")
    cases = [_case(tmp_path, name, f"addon: 'exiting:{name}'\n") for name in names]
    cases.append(_case(tmp_path, "fine", "addon: gemma4\n"))
    report = tmp_path / "r"
    result = run_cli(
        "run",
        *cases,
        "--isolation",
        "none",
        "--report-dir",
        report,
        "--allow-import",
        "exiting",
        pythonpath=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    frame = _report(report).drop_duplicates("case_id").set_index("case_id")
    assert frame.status.to_dict() == {
        "SysExit": "error",
        "OsExit": "error",
        "SysExitWhileLoading": "error",
        "fine": "pass",
    }
    assert "sys.exit(0)" in frame.reason["SysExit"]
    assert "os._exit(0)" in frame.reason["OsExit"]


# --- 11, 12. readable in a CI log, convenient at a terminal -------------------------------


def test_off_a_terminal_one_plain_line_per_case(tmp_path):
    text = _case(tmp_path, "text_case", image=False)
    broken = tmp_path / "broken.yaml"
    broken.write_text("messages: [{role: user, content: hi}]\nmodel: {hf: n/" + "x" * 80 + "}\n")
    result = run_cli("run", text, broken, "--report-dir", tmp_path / "r", pythonpath=tmp_path)
    lines = result.stdout.splitlines()
    case_lines = [line for line in lines if line.startswith("[")]
    assert len(case_lines) == 2, result.stdout
    assert any(
        line.endswith("] PASS text_case logits max_abs_diff=0")
        or " PASS text_case " in line
        for line in case_lines
    ), case_lines
    assert any(" SKIP broken " in line and "x" * 80 in line for line in case_lines)
    assert all(line.count("[") >= 1 and "/2 " in line for line in case_lines)
    assert ".py:" not in result.stdout + result.stderr  # no source locations
    assert "┃" not in result.stdout  # no table off a terminal


def test_help_shows_defaults_exit_codes_and_version():
    from harness.cli import build_parser

    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]
    text = " ".join(run.format_help().split())
    assert "(default: 600.0)" in text and "(default: reports/latest)" in text
    assert "exit codes:" in text and "130 interrupted" in text
    assert "5 no case was compared" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0


def test_selection_by_keyword_and_marker(capsys):
    assert main(["list", str(CASES), "-k", "image and not two"]) == 0
    listed = capsys.readouterr().out
    assert "gemma4_one_image" in listed and "gemma4_two_images" not in listed
    assert main(["list", str(CASES), "-m", "text"]) == 0
    listed = capsys.readouterr().out
    assert "gemma4_text" in listed and "gemma4_one_image" not in listed
    assert main(["list", str(CASES), "-k", "(image"]) == 2


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("one", True),
        ("ONE", True),
        ("one and image", True),
        ("one and not image", False),
        ("two or image", True),
        ("not (two or three)", True),
        ("(one)", True),
        ("nothing", False),
    ],
)
def test_keyword_expressions(expression, expected):
    from harness.select import keyword_matches

    assert keyword_matches(expression, "gemma4_one_image") is expected


@pytest.mark.parametrize("expression", ["", "and", "one and", "(one", "one)", "not"])
def test_bad_keyword_expressions_are_errors(expression):
    from harness.select import SelectionError, keyword_matches

    with pytest.raises(SelectionError):
        keyword_matches(expression, "gemma4_one_image")
