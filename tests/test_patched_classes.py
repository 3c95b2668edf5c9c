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
