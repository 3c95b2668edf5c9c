"""The pytest plugin (harness/pytest_plugin.py): case files as pytest items with
`--parity-cases`, and the `parity` fixture. Inner sessions run in this process (pytester's
inline runs, `--parity-isolation none`) on the session's synthesized checkpoint cache
(MLX_PARITY_CACHE, set by conftest.py); one of them runs models (a single Gemma 4 group)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import CASES

from harness.addons import AddOnError, check_addon_name, resolve_addon
from harness.policy import ImportPolicy

pytest_plugins = ("pytester",)

MUTANT_CASE = """\
include: gemma4_one_image.yaml
addon: mutants:FeaturesNotDivided
markers: [image, mutant]
"""
ABSENT_CASE = """\
model: {hf: org/absent}
messages: [{role: user, content: Hello}]
markers: [text, xfail]
"""
BAD_CASE = """\
include: _gemma4_tiny.yaml
messages: [{role: user, content: Hello}]
prefill_step_size: -3
"""
# A test written against the fixture: the add-on class object itself, no import flag.
FIXTURE_TEST = """\
from mutants import FeaturesNotDivided

from harness.records import Status


def test_class_object_addon(parity):
    verdict = parity(
        "cases/gemma4_one_image.yaml", addon=FeaturesNotDivided, id="by_fixture", decode_steps=0
    )
    assert verdict.case_id == "by_fixture"
    assert not any(c.stage.startswith("decode.") for c in verdict.checks)
    assert verdict.status is Status.FAIL, verdict.reason
    assert verdict.first_failure == "embeddings"
"""


@pytest.fixture(scope="module", autouse=True)
def _stack_imported_first(tmp_path_factory: pytest.TempPathFactory) -> None:
    """pytester's inline runs drop from sys.modules what they imported, and some modules
    cannot be imported twice in one process (MLX aborts, pandas re-registers its pyarrow
    types): import the stack, and write an (empty) report, before them."""
    import mlx_lm  # noqa: F401
    import mlx_vlm  # noqa: F401

    import harness.paths.native  # noqa: F401
    import harness.paths.unified  # noqa: F401
    from harness.report import write_reports
    from harness.runner import RunResult, utc_now

    now = utc_now()
    write_reports(RunResult((), now, now), tmp_path_factory.mktemp("warm") / "report")


@pytest.fixture
def case_dir(pytester: pytest.Pytester) -> Path:
    """Two shipped Gemma 4 cases (one model), a mutant of one, an absent hub model, and a
    case file with a bad field."""
    root = pytester.path / "cases"
    (root / "images").mkdir(parents=True)
    for name in ("_gemma4_tiny.yaml", "gemma4_text.yaml", "gemma4_one_image.yaml"):
        shutil.copy(CASES / name, root / name)
    shutil.copy(CASES / "images" / "red_square_400x300.png", root / "images")
    (root / "gemma4_one_image_mutant.yaml").write_text(MUTANT_CASE)
    (root / "absent_hub_model.yaml").write_text(ABSENT_CASE)
    (root / "bad_prefill.yaml").write_text(BAD_CASE)
    return root


def _listed(result: pytest.RunResult) -> list[str]:
    return sorted(line.split("::")[-1] for line in result.stdout.lines if "::" in line)


def _reports(reprec) -> dict[str, pytest.TestReport]:
    """The deciding report of each item (its call, or the setup that skipped or failed)."""
    out = {}
    for report in reprec.getreports("pytest_runtest_logreport"):
        if report.when == "call" or (report.when == "setup" and not report.passed):
            out[report.nodeid.split("::")[-1]] = report
    return out


def test_selection_with_k_and_m_and_registered_markers(pytester, case_dir):
    strict = ("--parity-cases", "cases", "--co", "-q", "--strict-markers")
    everything = pytester.runpytest(*strict, "-W", "error::pytest.PytestUnknownMarkWarning")
    assert everything.ret == 0
    assert _listed(everything) == sorted(
        [
            "absent_hub_model",
            "bad_prefill",
            "gemma4_one_image",
            "gemma4_one_image_mutant",
            "gemma4_text",
        ]
    )
    assert _listed(pytester.runpytest(*strict, "-k", "one_image and not mutant")) == [
        "gemma4_one_image"
    ]
    assert _listed(pytester.runpytest(*strict, "-m", "image and not mutant")) == [
        "gemma4_one_image"
    ]
    assert _listed(pytester.runpytest(*strict, "-m", "text")) == [
        "absent_hub_model",
        "gemma4_text",
    ]
    # Case markers are labels: one naming a pytest marker with a meaning is left off.
    items = {i.name: i for i in pytester.inline_genitems("--parity-cases", "cases")[0]}
    assert {m.name for m in items["absent_hub_model"].iter_markers()} == {"text"}
    assert {m.name for m in items["gemma4_one_image_mutant"].iter_markers()} == {
        "image",
        "mutant",
    }


def test_cases_run_as_items_with_report(pytester, case_dir):
    pytester.makepyfile(test_engine=FIXTURE_TEST)
    reprec = pytester.inline_run(
        "--parity-cases",
        "cases",
        "test_engine.py",
        "--parity-isolation",
        "none",
        "--parity-allow-import",
        "mutants",
        "--parity-report-dir",
        "report",
    )
    reports = _reports(reprec)
    outcomes = {name: r.outcome for name, r in reports.items()}
    assert outcomes == {
        "gemma4_text": "passed",
        "gemma4_one_image": "passed",
        "gemma4_one_image_mutant": "failed",
        "absent_hub_model": "skipped",
        "bad_prefill": "failed",
        "test_class_object_addon": "passed",
    }
    frame = pd.read_csv(pytester.path / "report" / "parity.csv")
    explanations = frame.groupby("case_id").explanation.first()
    # The failure says where parity breaks, as the report does, and nothing else.
    mutant = reports["gemma4_one_image_mutant"].longreprtext
    assert "embeddings differs first" in mutant and "first failure: embeddings" in mutant
    assert explanations["gemma4_one_image_mutant"] in mutant
    assert "Traceback" not in mutant and "harness/" not in mutant
    # A skip carries its reason; a bad case file is one line naming the file and the field.
    skip_where, _, skip_reason = reports["absent_hub_model"].longrepr
    assert skip_where.endswith("absent_hub_model.yaml")
    assert "org/absent is not in the local Hugging Face cache" in skip_reason
    bad = reports["bad_prefill"].longreprtext.strip()
    assert "\n" not in bad and "bad_prefill.yaml: prefill_step_size:" in bad
    # One report for the session: the five case items, not the fixture's own run.
    statuses = frame.groupby("case_id").status.first().to_dict()
    assert statuses == {
        "gemma4_text": "pass",
        "gemma4_one_image": "pass",
        "gemma4_one_image_mutant": "fail",
        "absent_hub_model": "skip",
        "bad_prefill": "error",
    }


def test_case_file_imports_only_what_the_command_line_allows(pytester, case_dir):
    """Without --parity-allow-import the mutant case is refused before any model loads."""
    reprec = pytester.inline_run(
        "--parity-cases", "cases", "-k", "mutant", "--parity-isolation", "none"
    )
    (report,) = _reports(reprec).values()
    assert report.failed
    text = report.longreprtext.strip()
    assert "\n" not in text and "gemma4_one_image_mutant.yaml: addon:" in text
    assert "pass --parity-allow-import mutants" in text


def test_addon_class_object_is_the_callers_only():
    from mutants import FeaturesNotDivided

    name = "mutants:FeaturesNotDivided"
    with pytest.raises(AddOnError, match="--allow-import mutants"):
        check_addon_name(name, "gemma4", ImportPolicy())
    given = ImportPolicy(addon_classes=((name, FeaturesNotDivided),))
    check_addon_name(name, "gemma4", given)
    assert resolve_addon(name, "gemma4", given) is FeaturesNotDivided
    not_a_class = ImportPolicy(addon_classes=((name, len),))  # type: ignore[arg-type]
    with pytest.raises(AddOnError, match="not a class"):
        resolve_addon(name, "gemma4", not_a_class)


def test_plugin_is_light_without_parity_cases(pytester):
    """pytest loads the plugin in every session: importing it and running a session
    without --parity-cases imports neither MLX nor the runner."""
    pytester.makepyfile(
        test_light="""
        import sys

        def test_nothing_heavy():
            heavy = {"mlx", "mlx_lm", "mlx_vlm", "pydantic", "harness.runner"}
            assert "harness.pytest_plugin" in sys.modules
            assert not heavy & set(sys.modules)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_bad_report_dir_is_a_usage_error(pytester, case_dir):
    (pytester.path / "taken").write_text("a file")
    result = pytester.runpytest("--parity-cases", "cases", "--parity-report-dir", "taken")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --parity-report-dir: report dir * is not a directory"])



def test_fixture_overrides_are_validated_like_case_fields():
    from harness.case_yaml import CaseError
    from harness.cases import load_case
    from harness.one_case import with_overrides

    case = load_case(CASES / "gemma4_text.yaml")
    with pytest.raises(CaseError, match=r"gemma4_text\.yaml: prefill_step_size: .* equal to 1"):
        with_overrides(case, {"prefill_step_size": 0})
    with pytest.raises(CaseError, match=r": nonsense: Extra inputs"):
        with_overrides(case, {"nonsense": 1})
    changed = with_overrides(case, {"decode_steps": 0, "id": "renamed"})
    assert (changed.decode_steps, changed.id, changed.messages) == (0, "renamed", case.messages)
