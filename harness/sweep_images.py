"""Image forms of the randomized sweep (`harness.sweep`), written as files into a case
directory: every PIL mode and container a user may hand an engine (RGB, RGBA, palette,
16-bit, grayscale, an EXIF-rotated JPEG, an animated GIF), degenerate and extreme sizes
(1x1, 3000x2000, 2000x20, 20x2000), each textured (every patch different) or flat.

Pixels depend only on the form, the texture flag and the size: the same sweep seed writes
byte-identical files, and two cases that draw the same image share one file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# form -> (PIL mode written, file suffix, default size (width, height))
FORMS: dict[str, tuple[str, str, tuple[int, int]]] = {
    "rgb": ("RGB", "png", (200, 150)),
    "rgba": ("RGBA", "png", (180, 240)),
    "palette": ("P", "png", (240, 160)),
    "i16": ("I;16", "png", (160, 160)),
    "gray": ("L", "png", (220, 140)),
    "exif6": ("RGB", "jpg", (240, 120)),  # stored 240x120, displayed 120x240 (orientation 6)
    "gif2": ("P", "gif", (160, 120)),  # animated, two frames
    "tiny": ("RGB", "png", (1, 1)),
    "large": ("RGB", "jpg", (3000, 2000)),
    "wide": ("RGB", "png", (2000, 20)),
    "tall": ("RGB", "png", (20, 2000)),
}
# EXIF tag 0x0112 (Orientation); 6 = "rotate 90 CW to display".
ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class ImageForm:
    form: str
    textured: bool

    @property
    def size(self) -> tuple[int, int]:
        return FORMS[self.form][2]

    @property
    def file_name(self) -> str:
        mode, suffix, (w, h) = FORMS[self.form]
        texture = "textured" if self.textured else "flat"
        return f"{self.form}_{texture}_{w}x{h}.{suffix}"

    @property
    def label(self) -> str:
        return f"{self.form}/{'textured' if self.textured else 'flat'}"


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(
        int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    )


def _pixels(form: ImageForm, channels: int = 3, peak: int = 255) -> np.ndarray:
    """(h, w, channels) float in [0, peak]: smooth colour waves plus noise and a few flat
    shapes (textured), or two flat colours split by a diagonal (flat)."""
    w, h = form.size
    rng = _rng(form.file_name)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    if form.textured:
        out = np.empty((h, w, channels), np.float32)
        for c in range(channels):
            fx, fy, phase = rng.uniform(0.01, 0.2), rng.uniform(0.01, 0.2), rng.uniform(0, 6.3)
            wave = 0.5 + 0.5 * np.sin(fx * x + fy * y + phase)
            out[..., c] = 0.7 * wave + 0.3 * rng.random((h, w), np.float32)
        for _ in range(3):  # flat rectangles on top of the waves
            x0, y0 = rng.integers(0, max(w, 1)), rng.integers(0, max(h, 1))
            out[y0 : y0 + max(h // 4, 1), x0 : x0 + max(w // 4, 1)] = rng.random(channels)
    else:
        first, second = rng.random(channels), rng.random(channels)
        mask = (x / max(w, 1) + y / max(h, 1)) < 1.0
        out = np.where(mask[..., None], first, second)
    return np.clip(out * peak, 0, peak)


def write_image(form: ImageForm, directory: Path) -> Path:
    """Write `form` into `directory` (once) and return its path."""
    from PIL import Image

    path = directory / form.file_name
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    mode, suffix, _ = FORMS[form.form]
    tmp = path.with_name(f".{path.name}.tmp")
    rgb = Image.fromarray(_pixels(form).astype(np.uint8))
    if form.form == "rgba":
        alpha = _pixels(ImageForm("gray", form.textured), channels=1)[..., 0]
        alpha = np.resize(alpha, rgb.size[::-1])
        image = rgb.copy()
        image.putalpha(Image.fromarray(alpha.astype(np.uint8)))
        image.save(tmp, format="PNG")
    elif form.form == "palette":
        rgb.quantize(colors=16).save(tmp, format="PNG")
    elif form.form == "i16":
        values = _pixels(form, channels=1, peak=65535)[..., 0].astype(np.uint16)
        Image.fromarray(values).save(tmp, format="PNG")
    elif form.form == "gray":
        rgb.convert("L").save(tmp, format="PNG")
    elif form.form == "exif6":
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = 6
        rgb.save(tmp, format="JPEG", quality=90, exif=exif.tobytes())
    elif form.form == "gif2":
        other = Image.fromarray(255 - np.asarray(rgb))
        frames = [rgb.quantize(colors=32), other.quantize(colors=32)]
        frames[0].save(
            tmp, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0
        )
    elif suffix == "jpg":
        rgb.save(tmp, format="JPEG", quality=90)
    else:
        rgb.save(tmp, format="PNG")
    tmp.replace(path)
    return path
