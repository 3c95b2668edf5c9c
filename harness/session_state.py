"""Session state: the same case captured again in a session that has just served other
prompts must give the same arrays as its first capture. An add-on that caches image
features, positions or masks across prompts without clearing them fails here, by name
(`session_state`), even when each prompt alone is right.

The warm-up prompts are chosen against the case: before an image case, an image of a
size no shipped case uses, a text prompt, then images of the case's own sizes with other
pixels; before a text case, two image prompts of different sizes. Their images are drawn
here, into a temporary directory of the harness's own: a case file names nothing that is
read or written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .cases import CaseSpec, Message
from .differences import first_difference
from .records import Capture, CheckResult

STAGE = "session_state"
# (width, height): sizes no shipped case uses, one landscape and one portrait.
WARMUP_SIZES = ((96, 64), (56, 88))


def _draw(path: Path, size: tuple[int, int], seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="PNG")


def _prompt(case: CaseSpec, text: str, images: list[Path]) -> CaseSpec:
    content: list[dict[str, str]] = [{"type": "image", "image": str(p)} for p in images]
    content.append({"type": "text", "text": text})
    message = Message.model_validate({"role": "user", "content": content})
    return case.model_copy(
        update={"id": f"{case.id}.warmup", "messages": [message], "decode_steps": 0}
    )


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    from .case_yaml import image_formats

    with Image.open(path, formats=image_formats()) as image:
        return image.size


@contextlib.contextmanager
def warmups(case: CaseSpec) -> Iterator[list[tuple[CaseSpec, str]]]:
    """The prompts served before the second capture (with a label each), their images on
    disk for the duration. For an image case the last one has images of the case's own
    sizes with other pixels: state kept by shape (token counts, grids) is stale then."""
    with tempfile.TemporaryDirectory(prefix="mlx-parity-warmup-") as tmp:
        def drawn(name: str, sizes: list[tuple[int, int]], seed: int) -> list[Path]:
            paths = [Path(tmp) / f"{name}{i}.png" for i in range(len(sizes))]
            for i, (path, size) in enumerate(zip(paths, sizes, strict=True)):
                _draw(path, size, seed + i)
            return paths

        (w0, h0), (w1, h1) = WARMUP_SIZES
        image = _prompt(case, "What is it?", drawn("a", [(w0, h0)], 0))
        first = (image, f"an image prompt ({w0}x{h0})")
        if not case.has_images:
            other = _prompt(case, "And this?", drawn("b", [(w1, h1)], 1))
            yield [first, (other, f"an image prompt ({w1}x{h1})")]
            return
        sizes = [_size(p) for p in case.image_files]
        same = _prompt(case, "Describe it.", drawn("c", sizes, 2))
        yield [
            first,
            (_prompt(case, "Say hello.", []), "a text prompt"),
            (same, f"{len(sizes)} image(s) of the case's sizes, other pixels"),
        ]


def serve_then_capture(session: Any, case: CaseSpec) -> Capture:
    """Serve the warm-up prompts in `session`, then capture `case`. A warm-up the path
    cannot take (images on a text-only path) is left out; what was served is recorded in
    the capture's provenance."""
    from .paths import PathError

    served = []
    with warmups(case) as prompts:
        for prompt, label in prompts:
            try:
                session.capture(prompt)
            except PathError:
                continue
            served.append(label)
    capture = session.capture(case)
    note = ", ".join(served) or "nothing"
    return dataclasses.replace(capture, provenance={**capture.provenance, SERVED: note})


def check(case_id: str, fresh: Capture, used: Capture) -> CheckResult:
    """One gating row: every array both captures hold must be identical."""
    served = used.provenance.get(SERVED, "other prompts")
    names = [k for k in fresh.arrays if k in used.arrays]
    arrays = {k: (fresh.arrays[k], used.arrays[k], fresh.dtypes.get(k, "float32")) for k in names}
    missing = sorted(set(fresh.arrays) ^ set(used.arrays))
    found = first_difference(names, fresh, used, None, arrays)
    if found is not None:
        value = found.max_abs if np.isfinite(found.max_abs) else float("inf")
        detail = f"after serving {served}: {found.stage} differs ({found.detail})"
    elif missing:
        value, detail = float("inf"), f"after serving {served}: stages differ ({missing[0]})"
    else:
        value, detail = 0.0, f"identical after serving {served}"
    passed = value == 0.0
    return CheckResult(
        case_id, STAGE, "exact", "max_abs_diff", value, 0.0, passed,
        0.0 if passed else float("nan"), detail,
    )  # fmt: skip



SERVED = "session_state_served"
