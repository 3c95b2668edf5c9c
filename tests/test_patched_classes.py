"""An add-on that replaces mlx-lm classes when imported must never make a "patched vs
unpatched" comparison pass as "patched vs patched" (issue: `--isolation none`)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from conftest import CASES

from harness.cases import load_case
from harness.patches import patched_library_classes
from harness.policy import ImportPolicy
from harness.records import Status
from harness.runner import RunOptions, run_cases

PATCHING_ADDON = textwrap.dedent("""
    import mlx_lm.models.gemma4_text as text_module

    from harness.addons.gemma4 import AddOn as _Bundled

    _Original = text_module.Gemma4TextModel


    class PatchedTextModel(_Original):
        '''What engine add-ons do: replace the library class at import time.'''

        def __call__(self, *args, **kwargs):
            return super().__call__(*args, **kwargs) * 1.001


    text_module.Gemma4TextModel = PatchedTextModel


    class PatchingAddOn(_Bundled):
        pass
""")


def _cases(tmp_path):
    image = CASES / "images" / "red_square_400x300.png"
    first = tmp_path / "patching.yaml"
    first.write_text(
        f"model: {{synth: gemma4, options: {json.dumps({'hidden_size': 64, 'seed': 0})}}}\n"
        "addon: 'patching_addon:PatchingAddOn'\nprofile: exact\n"
        f"messages: [{{role: user, content: [{{type: image, image: {image}}}]}}]\n"
    )
    second = tmp_path / "text_patch.yaml"
    second.write_text(
        f"model: {{synth: gemma4, options: {json.dumps({'hidden_size': 48, 'seed': 0})}}}\n"
        "paths: {reference: mlx-lm, candidate: unified}\naddon: gemma4\nprofile: exact\n"
        "messages: [{role: user, content: 'Hello, how are you?'}]\n"
    )
    return [load_case(first), load_case(second)]


@pytest.mark.parametrize("isolation", ["none", "process"])
def test_a_patch_imported_earlier_never_passes_as_unpatched(tmp_path, monkeypatch, isolation):
    import mlx_lm.models.gemma4_text as text_module

    # The in-process run patches this process: restore the class when the test ends.
    monkeypatch.setattr(text_module, "Gemma4TextModel", text_module.Gemma4TextModel)
    monkeypatch.delitem(sys.modules, "patching_addon", raising=False)
    (tmp_path / "patching_addon.py").write_text(PATCHING_ADDON)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    options = RunOptions(isolation=isolation, imports=ImportPolicy(("patching_addon",)))
    verdicts = {v.case_id: v for v in run_cases(_cases(tmp_path), options=options).verdicts}
    text = verdicts["text_patch"]
    if isolation == "none":
        # The mlx-lm session would load the patched class: refused, named.
        assert text.status is Status.ERROR, text.reason
        assert "replaced library classes" in text.reason
        assert "mlx_lm.models.gemma4_text.Gemma4TextModel" in text.reason
    else:
        # Each model group has a worker of its own: the comparison is real and passes.
        assert text.status is Status.PASS, text.reason
    patched = [p for p in patched_library_classes() if "patching_addon" in p]
    assert bool(patched) is (isolation == "none")  # workers never patch this process


# --- a worker serving several model groups ---------------------------------------------------


def _text_case(tmp_path, name: str, hidden: int, addon: str = "gemma4"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"model: {{synth: gemma4, options: {json.dumps({'hidden_size': hidden, 'seed': 0})}}}\n"
        f"addon: '{addon}'\nprofile: exact\ndecode_steps: 0\n"
        "messages: [{role: user, content: 'Hello, how are you?'}]\n"
    )
    return load_case(path)


def _worker_pids(monkeypatch) -> list[int]:
    """The pid of the worker each model group (and each restart) was handed."""
    import harness.execute as execute

    pids: list[int] = []
    take = execute.take

    def recording_take(**kwargs):
        worker = take(**kwargs)
        pids.append(worker.process.pid)
        return worker

    monkeypatch.setattr(execute, "take", recording_take)
    return pids


def test_a_worker_serves_the_next_group_only_after_nothing_but_harness_code(
    tmp_path, monkeypatch
):
    """The import of the MLX stack (~8 s) is paid once for groups that run only built-in
    paths and add-ons; a group that ran code allowed from the command line retires its
    worker, so the next group starts in a fresh process."""
    pids = _worker_pids(monkeypatch)
    builtin = [_text_case(tmp_path, f"builtin_{h}", h) for h in (48, 64)]
    result = run_cases(builtin)
    assert [v.status for v in result.verdicts] == [Status.PASS] * 2
    assert len(pids) == 2 and pids[0] == pids[1], pids

    pids.clear()
    external = _text_case(tmp_path, "external", 48, "mutants:EngineStyle")
    options = RunOptions(imports=ImportPolicy(("mutants",)))
    result = run_cases([external, builtin[1]], options=options)
    assert len(pids) == 2 and pids[0] != pids[1], pids


def test_a_worker_whose_libraries_were_patched_is_never_handed_on(tmp_path, monkeypatch):
    """Even where reuse is allowed, a worker that ends a job with a library class replaced
    says so and is stopped: the next group's unpatched path runs in a fresh process."""
    import harness.runner as runner

    monkeypatch.setattr(runner, "_harness_code_only", lambda plan, model_type: True)
    (tmp_path / "patching_addon.py").write_text(PATCHING_ADDON)
    monkeypatch.syspath_prepend(str(tmp_path))
    pids = _worker_pids(monkeypatch)
    options = RunOptions(imports=ImportPolicy(("patching_addon",)))
    verdicts = {v.case_id: v for v in run_cases(_cases(tmp_path), options=options).verdicts}
    assert verdicts["text_patch"].status is Status.PASS, verdicts["text_patch"].reason
    assert len(pids) == 2 and pids[0] != pids[1], pids


def test_a_worker_whose_group_failed_a_case_is_not_handed_on(tmp_path, monkeypatch):
    """A capture that failed (here: the plain mlx-lm path handed an image prompt; out of
    memory would look the same) may leave the process degraded: the next group gets a
    fresh worker."""
    pids = _worker_pids(monkeypatch)
    image = CASES / "images" / "red_square_400x300.png"
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        f"model: {{synth: gemma4, options: {json.dumps({'hidden_size': 64, 'seed': 0})}}}\n"
        "paths: {reference: mlx-lm, candidate: unified}\naddon: gemma4\ndecode_steps: 0\n"
        f"messages: [{{role: user, content: [{{type: image, image: {image}}}]}}]\n"
    )
    result = run_cases([load_case(failing), _text_case(tmp_path, "after", 48)])
    statuses = {v.case_id: v.status for v in result.verdicts}
    assert statuses == {"failing": Status.ERROR, "after": Status.PASS}, statuses
    assert len(pids) == 2 and pids[0] != pids[1], pids


def test_builtin_means_the_resolved_addon_is_the_harness_own(monkeypatch):
    """'auto' resolves to the checkpoint's model_type, which another package may have
    registered; a class handed over by the caller is the caller's code."""
    import harness.addons as addons

    assert addons.is_builtin("auto", "gemma4") and addons.is_builtin("gemma4", "gemma4")
    assert not addons.is_builtin("mutants:EngineStyle", "gemma4")
    given = ImportPolicy(addon_classes=(("gemma4", object),))
    assert not addons.is_builtin("gemma4", "gemma4", given)
    monkeypatch.setattr(addons, "registered", lambda kind: {"gemma4": "engine.addons:Gemma4"})
    assert not addons.is_builtin("auto", "gemma4")


def test_a_worker_with_a_library_fix_applied_serves_only_harness_code(monkeypatch):
    """A fix the harness applied for one architecture stays in the process: a group
    running code from elsewhere gets a worker without it, so its result does not depend
    on which group ran before it."""
    import harness.worker as worker

    class Process:
        def __init__(self) -> None:
            self.alive = True

        def is_alive(self) -> bool:
            return self.alive

        def kill(self) -> None:
            self.alive = False

        def join(self, timeout: float | None = None) -> None:
            pass

    class Conn:
        def send(self, message) -> None:
            pass

    monkeypatch.setattr(worker, "_start", lambda: worker.Worker(Process(), Conn()))
    monkeypatch.setattr(worker, "_spare", None)
    fixed = worker.Worker(Process(), Conn(), pristine=False)
    worker.give_back(fixed)
    assert worker.take() is fixed  # harness code only: the warm worker serves
    worker.give_back(fixed)
    fresh = worker.take(pristine=True)
    assert fresh is not fixed and fresh.pristine and not fixed.process.is_alive()
