"""Report formats, CLI exit codes, an add-on from outside the package, and the notebook."""

from __future__ import annotations

import textwrap
from pathlib import Path
from xml.etree import ElementTree as ET

import pandas as pd
import pytest
from conftest import CASES, ROOT, run_cli

from harness.cli import main
from harness.report import markdown, to_frame, write_reports


def test_parquet_has_one_row_per_case_stage_metric(shipped_run, tmp_path):
    outputs = write_reports(shipped_run, tmp_path)
    frame = pd.read_parquet(outputs["parquet"])
    checked = frame.dropna(subset=["metric"])
    assert not checked.duplicated(["case_id", "stage", "metric"]).any()
    assert set(frame.case_id) == {v.case_id for v in shipped_run.verdicts}
    assert {
        "value",
        "threshold",
        "margin",
        "required",
        "passed",
        "first_divergence",
        "checkpoint_hash",
        "version_mlx",
        "version_mlx-lm",
        "version_mlx-vlm",
        "run_commit",
    } <= set(frame.columns)
    one_image = checked[checked.case_id == "gemma4_one_image"]
    assert set(one_image.stage) == {
        "input_ids",
        "per_layer_inputs",
        "embeddings",
        "attention_mask",
        "logits",
        "decode.1",
        "decode.2",
        "tokens",
    } | {
        f"layer.{i}" for i in range(4)
    }
    # A skipped case keeps one row with its reason.
    skipped = frame[frame.status == "skip"]
    assert len(skipped) == 1 and "Hugging Face cache" in skipped.reason.iloc[0]
    assert pd.read_csv(outputs["csv"]).shape[0] == frame.shape[0]


def test_junit_and_markdown_describe_every_case(shipped_run, tmp_path):
    outputs = write_reports(shipped_run, tmp_path, junit=tmp_path / "ci" / "junit.xml")
    suite = ET.parse(outputs["junit"]).getroot()
    assert int(suite.get("tests")) == len(shipped_run.verdicts)
    assert suite.get("failures") == "0" and suite.get("skipped") == "1"
    text = markdown(shipped_run)
    assert "**PASS**" in text
    for v in shipped_run.verdicts:
        assert f"| {v.case_id} | {v.status.value} |" in text


def test_report_writes_leave_no_temporary_files(shipped_run, tmp_path):
    write_reports(shipped_run, tmp_path)
    write_reports(shipped_run, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "figures",
        "image_tokens.parquet",
        "parity.csv",
        "parity.junit.xml",
        "parity.md",
        "parity.parquet",
    ]


def _case(tmp_path: Path, name: str, extra: str) -> Path:
    images = CASES / "images"
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        textwrap.dedent(f"""
        model: {{synth: gemma4, options: {{logit_scale: 4.0}}}}
        messages:
          - role: user
            content:
              - {{type: image, image: {images / "red_square_400x300.png"}}}
              - {{type: text, text: Describe this image.}}
    """)
        + textwrap.dedent(extra)
    )
    return path


def test_cli_exit_codes(tmp_path):
    good = _case(tmp_path, "good", "addon: gemma4\n")
    broken = _case(tmp_path, "broken", "addon: 'mutants:FeaturesNotDivided'\n")
    bad_field = _case(tmp_path, "bad_field", "prefill_step_size: -1\n")
    unknown_addon = _case(tmp_path, "unknown_addon", "addon: nosuch\n")
    reports = tmp_path / "reports"
    assert main(["run", str(good), "--report-dir", str(reports)]) == 0
    allow = ["--allow-import", "mutants"]
    assert main(["run", str(good), str(broken), "--report-dir", str(reports), *allow]) == 1
    frame = pd.read_parquet(reports / "parity.parquet")
    assert set(frame[frame.case_id == "broken"].first_divergence) == {"embeddings"}
    assert main(["run", str(good), str(bad_field), "--report-dir", str(reports)]) == 2
    frame = pd.read_parquet(reports / "parity.parquet")
    assert set(frame.status) == {"pass", "error"}  # the good case still ran
    assert "prefill_step_size" in frame[frame.case_id == "bad_field"].reason.iloc[0]
    assert main(["run", str(unknown_addon), "--report-dir", str(reports)]) == 2
    reason = pd.read_parquet(reports / "parity.parquet").reason.iloc[0]
    assert "no built-in add-on 'nosuch'" in reason


def test_addon_from_another_package_through_the_cli(tmp_path):
    """`python -m harness run` with `module:Class` from a package outside harness/."""
    package = tmp_path / "engine_addons"
    package.mkdir()
    (package / "__init__.py").write_text("")
    # The README's complete example, as written there.
    readme = (ROOT / "README.md").read_text()
    example = readme.split("A complete external add-on")[1].split("```python\n")[1]
    (package / "gemma4_vision.py").write_text(example.split("```")[0])
    case = _case(tmp_path, "external", "addon: 'engine_addons.gemma4_vision:Gemma4VisionAddOn'\n")
    result = run_cli("run", case, "--report-dir", tmp_path / "r", pythonpath=tmp_path)
    assert result.returncode == 2, "an add-on outside the harness needs --allow-import"
    assert "--allow-import engine_addons" in result.stdout + result.stderr
    result = run_cli(
        "run",
        case,
        "--report-dir",
        tmp_path / "r",
        "--allow-import",
        "engine_addons",
        pythonpath=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    frame = pd.read_parquet(tmp_path / "r" / "parity.parquet")
    assert (frame.status == "pass").all() and (frame.value == 0).all()


def test_list_and_synth_commands(tmp_path, capsys):
    assert main(["list", str(CASES)]) == 0
    assert "gemma4_split_prefill" in capsys.readouterr().out
    assert main(["synth", "gemma4", "-o", "hidden_size=48"]) == 0
    built = Path(capsys.readouterr().out.strip())
    assert (built / "config.json").exists()
    assert main(["synth", "gemma4", "-o", "hidden=48"]) == 2


@pytest.mark.parametrize("argv", [["run", "--no-such-flag"], ["frobnicate"]])
def test_bad_usage_exits_two(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_notebook_executes_against_a_report(shipped_run, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    outputs = write_reports(shipped_run, tmp_path)
    monkeypatch.setenv("MLX_PARITY_REPORT", str(outputs["parquet"]))
    monkeypatch.setenv("MLX_PARITY_BASELINE", str(tmp_path))  # diffed against itself
    notebook = nbformat.read(ROOT / "reports" / "parity.ipynb", as_version=4)
    nbclient.NotebookClient(
        notebook,
        timeout=180,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "reports")}},
    ).execute()
    printed = "".join(
        o.get("text", "")
        for c in notebook.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.output_type == "stream"
    )
    assert str(outputs["parquet"]) in printed
    assert "mlx-parity diff: no change" in printed
    assert any(
        o.output_type == "display_data" and "image/png" in o.get("data", {})
        for c in notebook.cells
        for o in c.get("outputs", [])
    )
    assert to_frame(shipped_run).shape[0] == pd.read_parquet(outputs["parquet"]).shape[0]
