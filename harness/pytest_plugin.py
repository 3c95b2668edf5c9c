"""pytest plugin (entry point `pytest11: mlx_parity`): `pytest --parity-cases DIR` runs case
files as test items, and the `parity` fixture runs one case from a Python test.

Glue only: discovery and loading (`harness.cases.load_cases`), running (`harness.runner`),
the failure text (`harness.explain`) and the report (`harness.report`) are the harness's,
so an item means what `mlx-parity run` means. Importing this module imports nothing heavy:
pytest loads it in every session of the environment, and MLX loads only when a case runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .cli import DEFAULT_REPORT_DIR, MAX_IMAGE_PIXELS  # stdlib-only module

if TYPE_CHECKING:
    from .case_yaml import CaseError
    from .cases import CaseSpec
    from .policy import ImportPolicy
    from .records import Verdict
    from .runner import RunOptions, RunResult

# A case's markers become pytest markers (`-m image`). Names that would not survive pytest's
# marker registration or `-m` grammar are left off the item (the case still runs).
_MARKER = re.compile(r"[A-Za-z][A-Za-z0-9_\-.]{0,63}")
# Reasons name the CLI's flags; here they are spelled --parity-*.
_CLI_FLAG = re.compile(r"(?<![\w-])--(allow-import|allow-include|trust-remote-code)\b")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mlx-parity", "mlx-parity cases as test items")
    group.addoption(
        "--parity-cases",
        action="append",
        default=[],
        metavar="DIR",
        help="collect the case files under DIR (or a case file) as test items, "
        "as `mlx-parity run DIR` finds them (repeatable)",
    )
    group.addoption(
        "--parity-report-dir",
        default=str(DEFAULT_REPORT_DIR),
        metavar="DIR",
        help=f"where the session's parity report is written (default: {DEFAULT_REPORT_DIR})",
    )
    group.addoption(
        "--parity-allow-import",
        action="append",
        default=[],
        metavar="MODULE",
        help="let cases name 'MODULE[.sub]:Class' add-ons and paths (repeatable; also "
        "$MLX_PARITY_ALLOW_IMPORT); like `mlx-parity run --allow-import`",
    )
    group.addoption(
        "--parity-allow-include",
        action="append",
        default=[],
        metavar="DIR",
        help="let include: reach files under DIR too (default: only the cases root)",
    )
    group.addoption(
        "--parity-trust-remote-code",
        action="store_true",
        help="let cases that set trust_remote_code run their checkpoint's own code",
    )
    group.addoption(
        "--parity-isolation",
        choices=["process", "none"],
        default="process",
        help="run path sessions in worker processes (default) or in this process",
    )
    group.addoption(
        "--parity-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="seconds per case capture or model load in a worker (default: 600)",
    )


def pytest_load_initial_conftests(
    early_config: pytest.Config, parser: pytest.Parser, args: list[str]
) -> None:
    """`--parity-cases DIR` makes DIR a collection argument, so that `pytest --parity-cases
    cases/` collects the cases instead of the project's `testpaths`."""
    namespace = early_config.known_args_namespace
    targets = getattr(namespace, "parity_cases", None) or []
    given = namespace.file_or_dir
    for target in targets:
        if target not in given:
            args.append(target)  # parsed again into config.args after this hook
            given.append(target)  # what initial conftests are looked up from


_STATE = pytest.StashKey["_Parity"]()


def _key(path: Path | str) -> str:
    return os.path.abspath(path)


class _Parity:
    """One session's `--parity-cases`: the loaded cases and errors, the options from the
    command line, and the verdicts of the model groups run so far."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        targets: dict[str, Path] = {}
        for target in config.getoption("parity_cases"):
            targets.setdefault(_key(target), Path(target))  # each once, in order
        self.targets = list(targets.values())
        self.report_dir = Path(config.getoption("parity_report_dir"))
        self.entries: list[CaseSpec | CaseError] = []
        self.verdicts: dict[str, Verdict] = {}
        self.results: list[RunResult] = []
        self.policy: ImportPolicy | None = None  # set when the cases are loaded
        self.markers: set[str] = set()
        self.started = False

    def load(self) -> None:
        from .cases import load_cases
        from .policy import ImportPolicy
        from .report_files import check_report_dir

        problem = check_report_dir(self.report_dir)
        if problem:
            raise pytest.UsageError(f"--parity-report-dir: {problem}")
        try:
            self.policy = ImportPolicy.from_sources(self.config.getoption("parity_allow_import"))
        except ValueError as exc:
            message = str(exc).replace("--allow-import", "--parity-allow-import")
            raise pytest.UsageError(message) from None
        roots = tuple(Path(p) for p in self.config.getoption("parity_allow_include"))
        cases, errors = load_cases(self.targets, include_roots=roots)
        self.entries = [*cases, *errors]
        # Markers pytest or a plugin registered have a meaning there (skip, xfail,
        # usefixtures, ...): a case file only labels, it never marks itself as one of those.
        reserved = {_marker_name(line) for line in self.config.getini("markers")}
        self.markers = {m for c in cases for m in c.markers if _MARKER.fullmatch(m)} - reserved
        for name in sorted(self.markers):
            self.config.addinivalue_line("markers", f"{name}: mlx-parity case marker")

    def under(self, directory: Path) -> list[CaseSpec | CaseError]:
        """Entries from files under `directory`, and its own errors (an empty directory)."""
        top = _key(directory)
        return [e for e in self.entries if _key(e.source) == top or _within(e.source, top)]

    def of_file(self, path: Path) -> list[CaseSpec | CaseError]:
        return [e for e in self.entries if _key(e.source) == _key(path)]

    def options(self) -> RunOptions:
        from .runner import RunOptions

        return RunOptions(
            isolation=self.config.getoption("parity_isolation"),
            timeout=self.config.getoption("parity_timeout"),
            imports=self.policy,
            trust_remote_code=self.config.getoption("parity_trust_remote_code"),
            max_image_pixels=MAX_IMAGE_PIXELS,
        )

    def verdict(self, item: CaseItem) -> Verdict:
        """The item's verdict; the first item of a model group runs every selected case of
        that group, so each model loads once per session."""
        if item.case.id not in self.verdicts:
            key = item.case.model_key()
            waiting = [
                i.case
                for i in item.session.items
                if isinstance(i, CaseItem) and i.case.id not in self.verdicts
            ]
            group = [c for c in waiting if c.model_key() == key]
            self._run(group, more_follow=len(group) < len(waiting))
        return self.verdicts[item.case.id]

    def _run(self, group: list[CaseSpec], more_follow: bool) -> None:
        from .case_yaml import restrict_image_formats
        from .runner import run_cases

        if not self.started:  # the gate's session, as `mlx-parity run` does
            self.started = True
            restrict_image_formats()
            self._write(complete=False, verdicts=())  # no stale green report if killed
        # more_follow: a spare worker warms up for the next group while this one runs.
        result = run_cases(group, options=self.options(), more_follow=more_follow)
        self.results.append(result)
        self.verdicts.update((v.case_id, v) for v in result.verdicts)
        if not result.complete:
            raise KeyboardInterrupt

    def write_report(self, session: pytest.Session) -> None:
        """The session's report: every selected item's verdict, bad case files included."""
        from .runner import load_error_verdict

        verdicts: list[Verdict] = []
        complete = True
        for item in session.items:
            if isinstance(item, CaseErrorItem):
                verdicts.append(load_error_verdict(item.error))
            elif isinstance(item, CaseItem):
                found = self.verdicts.get(item.case.id)
                complete &= found is not None
                verdicts += [found] if found is not None else []
        self._write(complete, verdicts)

    def _write(self, complete: bool, verdicts: Any) -> None:
        from .report import write_reports
        from .runner import RunResult, run_provenance, utc_now

        now = utc_now()
        started = self.results[0].started if self.results else now
        provenance = self.results[0].provenance if self.results else run_provenance()
        errors = sum(v.config_error for v in verdicts)
        result = RunResult(tuple(verdicts), started, now, provenance, errors, complete)
        figures = "auto" if complete else "never"
        write_reports(result, self.report_dir, None, figures)


def _within(source: str, directory: str) -> bool:
    return _key(source).startswith(directory.rstrip(os.sep) + os.sep)


def _marker_name(line: str) -> str:
    return line.split(":")[0].split("(")[0].strip()


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("parity_cases"):
        return
    from . import offline

    offline()
    if config.getoption("numprocesses", None):
        raise pytest.UsageError(
            "--parity-cases runs each model group in one process and writes one report: "
            "run it without pytest-xdist's -n"
        )
    config.stash[_STATE] = _Parity(config)


def pytest_report_header(config: pytest.Config) -> str | None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return None
    targets = ", ".join(map(str, state.targets))
    isolation = config.getoption("parity_isolation")
    return f"mlx-parity: cases from {targets}; isolation {isolation}; report {state.report_dir}"


def pytest_sessionstart(session: pytest.Session) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is not None:
        state.load()


@pytest.hookimpl(tryfirst=True)
def pytest_collect_directory(path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    state = parent.config.stash.get(_STATE, None)
    if state is not None and any(_key(path) == _key(t) for t in state.targets):
        return CaseDirectory.from_parent(parent, path=path)
    return None


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    state = parent.config.stash.get(_STATE, None)
    if state is not None and any(_key(file_path) == _key(t) for t in state.targets):
        return CaseFile.from_parent(parent, path=file_path)
    return None


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(_STATE, None)
    if state is None or state.policy is None or session.config.option.collectonly:
        return
    if state.started:
        from .worker import release_spare

        release_spare()
    state.write_report(session)


class CaseDirectory(pytest.Directory):
    """A `--parity-cases` directory: its case files as `mlx-parity run` discovers them
    (sub-folders included, `_` bases and `images/` left out), not pytest's own walk."""

    def collect(self) -> Iterator[pytest.Item | pytest.Collector]:
        state = self.config.stash[_STATE]
        seen: set[str] = set()
        for entry in state.under(self.path):
            if _key(entry.source) == _key(self.path):  # the directory itself is at fault
                yield CaseErrorItem.from_parent(self, name=self.path.name, error=entry)
            elif _key(entry.source) not in seen:
                seen.add(_key(entry.source))
                yield CaseFile.from_parent(self, path=Path(_key(entry.source)))


class CaseFile(pytest.File):
    """One case file: one item, or one error item naming the file and the field."""

    def collect(self) -> Iterator[pytest.Item]:
        from .case_yaml import CaseError

        state = self.config.stash[_STATE]
        for entry in state.of_file(self.path):
            if isinstance(entry, CaseError):
                yield CaseErrorItem.from_parent(self, name=entry.case_id, error=entry)
                continue
            item = CaseItem.from_parent(self, name=entry.id, case=entry)
            for marker in entry.markers:
                if marker in state.markers:
                    item.add_marker(marker)
            yield item


class ParityFailed(Exception):
    """A case that failed or errored; the message is the whole failure text, one line
    without control or invisible characters (reasons can come from add-ons), as the
    CLI's console prints it."""

    def __init__(self, text: str) -> None:
        from .console import _clean

        super().__init__(_clean(text))


class _OneLine(pytest.Item):
    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ParityFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"parity case {self.name}"  # a skip is shown at the file


class CaseItem(_OneLine):
    def __init__(self, *, case: CaseSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        from .explain import explain
        from .records import Status

        verdict = self.config.stash[_STATE].verdict(self)
        text = explain(verdict)
        if text:
            self.user_properties.append(("parity", text))  # pytest's JUnit keeps it
        if verdict.status is Status.SKIP:  # reported at the case file, not at this line
            reason = ParityFailed(verdict.reason).args[0]
            raise pytest.skip.Exception(reason, _use_item_location=True)
        if verdict.status is Status.FAIL:
            paths = f"{verdict.reference} vs {verdict.candidate}"
            raise ParityFailed(f"parity breaks ({paths}): {text or verdict.reason}")
        if verdict.status is Status.ERROR:
            raise ParityFailed(_CLI_FLAG.sub(r"--parity-\1", verdict.reason))


class CaseErrorItem(_OneLine):
    """A case file that does not load: fails with its one-line error, the others run."""

    def __init__(self, *, error: CaseError, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.error = error

    def runtest(self) -> None:
        raise ParityFailed(str(self.error))


# --- the `parity` fixture --------------------------------------------------------------


@pytest.fixture
def parity(request: pytest.FixtureRequest) -> Callable[..., Verdict]:
    """`verdict = parity(case_or_path, addon=MyAddOn, **overrides)`: run one case in this
    process and return its Verdict (harness.one_case.run_one). `addon` may be the add-on
    class itself (no import flag: the test holds the class); `module:Class` names need
    `--parity-allow-import`."""
    from .one_case import run_one
    from .policy import ImportPolicy

    config = request.config
    policy = ImportPolicy.from_sources(config.getoption("parity_allow_import"))
    roots = tuple(Path(p) for p in config.getoption("parity_allow_include"))

    def run(case: Any, addon: str | type | None = None, **overrides: Any) -> Verdict:
        return run_one(case, addon, policy=policy, include_roots=roots, **overrides)

    return run
