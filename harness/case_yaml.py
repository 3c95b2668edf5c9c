"""Reading case files as untrusted data (a pull request may add any file, symlink or FIFO).

Case files and their includes are read only when they are regular files inside an allowed
root, at most `MAX_CASE_BYTES`, strictly UTF-8, with a `yaml.SafeLoader` subclass that
refuses aliases/anchors and duplicate keys and caps nodes and nesting. Every problem is a
one-line `CaseError` naming the file; no error echoes text of a file that failed to parse,
and key names only when they look like identifiers.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, ScalarNode

MAX_CASE_BYTES = 1 << 20  # 1 MiB: shipped case files are well under 2 KiB
MAX_YAML_NODES = 10_000
MAX_YAML_DEPTH = 64  # PyYAML composes recursively: deep nesting would hit RecursionError
MAX_INCLUDE_FILES = 32  # per case: diamond includes cannot fan out exponentially
MAX_MESSAGE_CHARS = 300
UNKNOWN_KEY = "(unknown key)"
ALIAS_PROBLEM = "YAML aliases/anchors are not allowed in case files"

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}")
_FIELD_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}|[0-9]{1,9}|\(unknown key\)|\(top level\)")
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
# Keys, dotted paths and 'package.module:Class' names, as a message may quote them.
_NAME = re.compile(r"(?=.{1,64}$)[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*(:[A-Za-z_]\w*)?")
_TOKEN_NAME = re.compile(r"<[a-z ]{1,30}>")  # PyYAML token names such as '<block end>'


# C0/C1 controls and the Unicode line and paragraph separators (new lines for splitlines).
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Characters that render as nothing or reorder what follows (Trojan source): format
# characters (Cf: bidi embeddings, overrides, isolates and marks, zero-width characters,
# BOM, tags...), lone surrogates, variation selectors, the combining grapheme joiner and
# fillers that look like blanks. tests/test_hostile_regressions.py checks the Cf list
# against unicodedata.
INVISIBLE = re.compile(
    "[\xad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160"
    "\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f\u3164"
    "\ud800-\udfff\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U000110bd\U000110cd"
    "\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]"
)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    shown = repr(char)[1:-1]
    if shown != char:
        return shown
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def one_line(text: str) -> str:
    """Escape control characters, Unicode line breaks and invisible or reordering
    characters (bidi controls, zero-width characters); keep everything else readable."""
    return INVISIBLE.sub(_escaped, CONTROL.sub(_escaped, text))


def safe_key(key: object) -> str:
    """A key as it may appear in an error: identifiers and indexes, else a neutral label
    (a non-YAML file parses as a mapping whose keys are its lines)."""
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < 10**9:
        return str(key)
    return key if isinstance(key, str) and _KEY.fullmatch(key) else UNKNOWN_KEY


def valid_id(case_id: str) -> bool:
    """Ids name files (`captures/<id>/`): no separators, no '..', no leading '.' or '-'."""
    return bool(_ID.fullmatch(case_id)) and ".." not in case_id


def safe_field(field: str) -> str:
    return ".".join(p if _FIELD_PART.fullmatch(p) else UNKNOWN_KEY for p in field.split("."))


def scrub(text: str) -> str:
    """Parser and validator messages quote pieces of the input: keep quoted identifiers,
    dotted names, token names and single characters, drop anything else."""

    def keep(match: re.Match[str]) -> str:
        inner = match.group()[1:-1]
        if len(inner) <= 4 or _TOKEN_NAME.fullmatch(inner) or _NAME.fullmatch(inner):
            return match.group()
        return "'...'"

    return _QUOTED.sub(keep, text)


class CaseError(ValueError):
    """A case that cannot run; `str()` is one line naming file and field."""

    def __init__(
        self, source: Path | str, message: str, case_id: str | None = None, field: str | None = None
    ) -> None:
        self.source = str(source)
        # Ids name report rows and capture directories: fall back to the file name.
        stem = one_line(Path(source).stem)
        self.case_id = case_id if case_id and valid_id(case_id) else stem
        # One line, always, and short: messages end up in pull-request comments.
        self.field = safe_field(one_line(field))[:200] if field else None
        message = one_line(message)
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        self.message = message
        super().__init__(self._where() + message)

    def _where(self) -> str:
        source = one_line(self.source)
        return f"{source}: {self.field}: " if self.field else f"{source}: "

    def during(self, activity: str) -> str:
        """One line naming file and field, with what was being done when it was found."""
        return f"{self._where()}{activity}: {self.message}"


class NotRegularFileError(OSError):
    pass


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file. O_NONBLOCK: opening a FIFO must
    not wait for a writer; fstat on the open descriptor: no swap after the check."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class FileTooLargeError(OSError):
    pass


def read_capped(path: Path, limit: int) -> bytes:
    """The bytes of `path` if it is a regular file (symlinks followed) of at most `limit`
    bytes; NotRegularFileError (FIFO, device, directory: never blocks), FileTooLargeError
    or another OSError otherwise."""
    with open_regular(path) as stream:
        raw = stream.read(limit + 1)
    if len(raw) > limit:
        limit_text = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit} bytes"
        raise FileTooLargeError(errno.EFBIG, f"larger than the {limit_text} limit")
    return raw


# --- images a case names ----------------------------------------------------------------

# Raster formats a case's image may have (Image.open's format ids; PPM covers PGM and PBM).
# Others are refused: PIL hands EPS/PostScript to Ghostscript, a program of its own.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "ICO", "TGA")


def image_formats() -> list[str]:
    """`IMAGE_FORMATS` this PIL can open (Image.open raises on a format it does not know)."""
    from PIL import Image

    Image.init()
    return [name for name in IMAGE_FORMATS if name in Image.OPEN]


def restrict_image_formats() -> None:
    """Unregister every PIL format outside `IMAGE_FORMATS`, for any Image.open in this
    process (mlx-vlm's and transformers' included): EPS would run Ghostscript. Call once at
    process start (the worker, the CLI); idempotent."""
    from PIL import Image

    Image.init()  # every plugin loaded now: a later init() cannot register them again
    for name in [n for n in Image.OPEN if n not in IMAGE_FORMATS]:
        del Image.OPEN[name]
    Image.ID[:] = [n for n in Image.ID if n in IMAGE_FORMATS]  # Image.open checks `is ID`


def image_problem(path: Path, max_pixels: int) -> str | None:
    """Why `path` is not a usable image (not a regular file, not one of `IMAGE_FORMATS`,
    over `max_pixels` by its header, does not decode), or None."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice it: make that an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            stream = open_regular(path)
            with stream, Image.open(stream, formats=image_formats()) as image:
                width, height = image.size
                if width * height > max_pixels:
                    size = f"{width}x{height}"
                    return f"image {path} is {size}, above the limit of {max_pixels} pixels"
                image.verify()
    except FileNotFoundError:
        return f"image {path} not found"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"image {path} is above the pixel limit (decompression bomb)"
    except UnidentifiedImageError:
        return f"{path} is not a readable image (formats: {', '.join(IMAGE_FORMATS)})"
    except OSError as exc:
        return f"{path} is not a readable image: {exc.strerror or exc}"
    except Exception as exc:  # whatever a decoder raises on a hostile file
        return f"{path} is not a readable image: {scrub(str(exc))}"
    return None


class CaseLoader(yaml.SafeLoader):
    """`yaml.safe_load` semantics, minus what a data file never needs: aliases (billion
    laughs), duplicate keys (last-wins hides mistakes); nodes and nesting capped."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ComposerError(None, None, ALIAS_PROBLEM, event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_YAML_NODES:
            raise ComposerError(None, None, f"more than {MAX_YAML_NODES} nodes", event.start_mark)
        if self._depth >= MAX_YAML_DEPTH:
            problem = f"nested deeper than {MAX_YAML_DEPTH} levels"
            raise ComposerError(None, None, problem, event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag.endswith(":merge"):
                    continue
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    shown = safe_key(key)
                    shown = shown if shown == UNKNOWN_KEY else repr(shown)
                    problem = f"duplicate key {shown}"
                    raise ConstructorError(None, None, problem, key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except Exception:
            # Bad timestamps, ints past Python's digit limit, bad base64...: the value's
            # text stays out of the message.
            raise ConstructorError(None, None, "invalid value", node.start_mark) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.reader.ReaderError):
        return f"unacceptable character #x{exc.character:04x} at position {exc.position}"
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    # The problem only: the exception's str() would quote the offending snippet.
    problem = getattr(exc, "problem", None) or "not valid YAML"
    return f"malformed YAML{where}: {scrub(problem)}"


def _load(text: str) -> Any:
    loader = CaseLoader(text)  # the reader checks the characters here already
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict[str, Any]:
    """The top-level mapping of one case file (or include)."""
    try:
        raw = read_capped(path, MAX_CASE_BYTES)
    except FileTooLargeError as exc:
        raise CaseError(path, exc.strerror) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = getattr(exc, "strerror", None) or "not a usable file name"
        raise CaseError(path, f"cannot read: {reason}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CaseError(path, f"not UTF-8 text (invalid byte at offset {exc.start})") from None
    try:
        data = _load(text)
    except yaml.YAMLError as exc:
        raise CaseError(path, _yaml_problem(exc)) from None
    except Exception as exc:  # data never raises a traceback
        raise CaseError(path, f"malformed YAML: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise CaseError(path, f"top level must be a mapping, got {type(data).__name__}")
    return data


_KIND_KEYS = frozenset({"synth", "path", "hf"})  # model: which kind of checkpoint
_TAG_KEYS = ("check", "type")  # discriminators of check specs and content items


def _replaces(base: Mapping[str, Any], override: Mapping[str, Any]) -> bool:
    """An override of a different kind replaces the base mapping instead of merging into
    it: {path: x} over {synth: gemma4, options: ...} is a local checkpoint, not both."""
    kinds = _KIND_KEYS & set(override)
    if kinds and kinds != _KIND_KEYS & set(base):
        return True
    return any(k in override and base.get(k, override[k]) != override[k] for k in _TAG_KEYS)


def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping) and not _replaces(old, value):
            merged[key] = merge(dict(old), value)
        else:
            merged[key] = value
    return merged


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, ValueError, RuntimeError):  # NUL in the name, symlink loop
        return None


class IncludeResolver:
    """Loads one case file and its includes; every file read must resolve, after
    symlinks, inside one of `roots` (the cases root first)."""

    def __init__(self, roots: Sequence[Path]) -> None:
        self.roots = tuple(r for r in map(_resolved, roots) if r is not None)
        self.files = 0

    def _inside(self, path: Path) -> Path | None:
        """`path` resolved, or None when it resolves outside every root."""
        resolved = _resolved(path)
        if resolved is not None and any(resolved.is_relative_to(r) for r in self.roots):
            return resolved
        return None

    def _outside_message(self) -> str:
        root = self.roots[0] if self.roots else "(none)"
        return f"resolves outside the cases root {root} (widen it with --allow-include DIR)"

    def load(self, path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
        resolved = self._inside(path)
        if resolved is None:  # a case file symlinked out of its directory
            raise CaseError(path, self._outside_message())
        self.files += 1
        if self.files > MAX_INCLUDE_FILES:
            raise CaseError(path, f"more than {MAX_INCLUDE_FILES} files included", field="include")
        data = read_yaml(path)
        includes = data.pop("include", [])
        includes = [includes] if isinstance(includes, str) else includes
        if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
            raise CaseError(path, "must be a file name or a list of file names", field="include")
        merged: dict[str, Any] = {}
        for name in includes:
            merged = merge(merged, self._include(path, name, (*seen, resolved)))
        return merge(merged, data)

    def _include(self, path: Path, name: str, seen: tuple[Path, ...]) -> dict[str, Any]:
        target = path.parent / name  # an absolute name replaces the parent
        resolved = self._inside(target)
        if resolved is None:
            raise CaseError(path, f"{name} {self._outside_message()}", field="include")
        if resolved in seen:
            raise CaseError(path, f"include cycle through {target.name}", field="include")
        try:
            return self.load(target, seen)
        except CaseError as exc:
            # Name the file the user ran, and the include that failed.
            inner = f"{exc.field}: {exc.message}" if exc.field else exc.message
            raise CaseError(path, f"{name}: {inner}", field="include") from None
