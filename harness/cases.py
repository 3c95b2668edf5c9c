"""Case files: YAML (safe_load) validated into frozen, typed CaseSpec objects.

A file may `include:` other files (paths relative to it); included mappings are merged
first and the file's own keys win. Files whose name starts with `_` are shared bases and
are not cases themselves when a directory is scanned. Errors name the file and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .checks import CheckSpec
from .profiles import PROFILES, Profile
from .records import STAGE_ORDER


def _one_line(text: str) -> str:
    """Escape control characters (newlines included), keep everything else readable."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)


class CaseError(ValueError):
    """A case that cannot run; `str()` is one line naming file and field."""

    def __init__(
        self, source: Path | str, message: str, case_id: str | None = None, field: str | None = None
    ) -> None:
        self.source = str(source)
        self.case_id = case_id or Path(source).stem
        # One line, always: field names and messages can come from arbitrary YAML keys.
        field = _one_line(field) if field else field
        message = _one_line(message)
        self.field = field
        self.message = message
        where = f"{self.source}: {field}: " if field else f"{self.source}: "
        super().__init__(where + message)

    def during(self, activity: str) -> str:
        """One line naming file and field, with what was being done when it was found."""
        where = f"{self.source}: {self.field}: " if self.field else f"{self.source}: "
        return f"{where}{activity}: {self.message}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthModel(_Strict):
    synth: str = Field(description="model_type of a synthesizer in harness/synth/")
    options: dict[str, Any] = Field(default_factory=dict)


class LocalModel(_Strict):
    path: str = Field(description="checkpoint directory; relative paths start at the case file")


class HubModel(_Strict):
    hf: str = Field(description="repo id, looked up in the local Hugging Face cache only")
    revision: str | None = None


ModelSpec = SynthModel | LocalModel | HubModel


class TextItem(_Strict):
    type: Literal["text"]
    text: str


class ImageItem(_Strict):
    type: Literal["image"]
    image: str = Field(description="image file; relative paths start at the case file")


ContentItem = Annotated[TextItem | ImageItem, Field(discriminator="type")]


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[ContentItem]


class PathPair(_Strict):
    reference: str = "mlx-vlm"
    candidate: str = "unified"


class CaseSpec(_Strict):
    id: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    source: str
    description: str = ""
    model: ModelSpec
    messages: list[Message] = Field(min_length=1)
    chat_template_kwargs: dict[str, Any] = Field(default_factory=lambda: {"enable_thinking": False})
    prefill_step_size: int = Field(2048, ge=1)
    max_size: tuple[int, int] | None = None
    paths: PathPair = PathPair()
    addon: str = Field("auto", description="add-on registry name, 'module:Class', or auto")
    profile: Literal["exact", "image"] | None = None
    tolerances: dict[str, list[CheckSpec]] = Field(default_factory=dict)
    markers: list[str] = Field(default_factory=list)
    trust_remote_code: bool = False

    @field_validator("tolerances", mode="before")
    @classmethod
    def _single_check_as_list(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: [v] if isinstance(v, Mapping) else v for k, v in value.items()}
        return value

    @field_validator("tolerances")
    @classmethod
    def _known_stages(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(STAGE_ORDER))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {list(STAGE_ORDER)}")
        return value

    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent

    @property
    def image_files(self) -> list[Path]:
        return [self.resolve_image(item.image) for item in self._items(ImageItem)]

    @property
    def has_images(self) -> bool:
        return bool(self._items(ImageItem))

    def _items(self, kind: type) -> list[Any]:
        return [
            item
            for m in self.messages
            if not isinstance(m.content, str)
            for item in m.content
            if isinstance(item, kind)
        ]

    def resolve_image(self, name: str) -> Path:
        path = Path(name)
        if path.is_absolute():
            return path
        resolved = (self.base_dir / path).resolve()
        if not resolved.is_relative_to(self.base_dir):
            raise CaseError(
                self.source,
                f"image {name!r} escapes {self.base_dir}; give an "
                "absolute path to use a file elsewhere",
                self.id,
                "messages",
            )
        return resolved

    def check_images(self) -> None:
        """Every image exists and decodes; errors name the exact field."""
        from PIL import Image, UnidentifiedImageError

        for i, message in enumerate(self.messages):
            if isinstance(message.content, str):
                continue
            for j, item in enumerate(message.content):
                if not isinstance(item, ImageItem):
                    continue
                field = f"messages.{i}.content.{j}.image"
                path = self.resolve_image(item.image)
                try:
                    with Image.open(path) as image:
                        image.verify()
                except FileNotFoundError:
                    raise CaseError(
                        self.source, f"image {path} not found", self.id, field
                    ) from None
                except (OSError, UnidentifiedImageError, SyntaxError) as exc:
                    raise CaseError(
                        self.source, f"{path} is not a readable image: {exc}", self.id, field
                    ) from None

    def template_messages(self) -> list[dict[str, Any]]:
        """Messages as chat templates expect them (image items carry only their type)."""
        out = []
        for m in self.messages:
            if isinstance(m.content, str):
                out.append({"role": m.role, "content": m.content})
            else:
                items = [
                    {"type": "text", "text": i.text}
                    if isinstance(i, TextItem)
                    else {"type": "image"}
                    for i in m.content
                ]
                out.append({"role": m.role, "content": items})
        return out

    def checks(self) -> Profile:
        """Profile defaults with this case's per-stage overrides applied."""
        name = self.profile or ("image" if self.has_images else "exact")
        return {**PROFILES[name], **{k: tuple(v) for k, v in self.tolerances.items()}}

    def model_label(self) -> str:
        spec = self.model
        if isinstance(spec, SynthModel):
            options = ",".join(f"{k}={v}" for k, v in sorted(spec.options.items()))
            return f"synth:{spec.synth}({options})"
        return f"path:{spec.path}" if isinstance(spec, LocalModel) else f"hf:{spec.hf}"

    def model_key(self) -> str:
        return json.dumps(self.model.model_dump(mode="json"), sort_keys=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise CaseError(path, f"cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise CaseError(path, f"malformed YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise CaseError(path, f"top level must be a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _resolve_includes(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        raise CaseError(path, f"include cycle through {path.name}", field="include")
    data = _read_yaml(path)
    includes = data.pop("include", [])
    includes = [includes] if isinstance(includes, str) else includes
    if not isinstance(includes, list) or not all(isinstance(i, str) and i for i in includes):
        raise CaseError(path, "must be a file name or a list of file names", field="include")
    merged: dict[str, Any] = {}
    for name in includes:
        try:
            included = _resolve_includes(path.parent / name, (*seen, path.resolve()))
        except CaseError as exc:
            # Name the file the user ran, and the include that failed.
            raise CaseError(path, f"{name}: {exc.message}", field="include") from None
        merged = _merge(merged, included)
    return _merge(merged, data)


def _discriminator_values(annotated: Any) -> set[str]:
    union, info = get_args(annotated)[:2]
    return {get_args(m.model_fields[info.discriminator].annotation)[0] for m in get_args(union)}


# Discriminator values pydantic inserts into error locations after a list index.
_UNION_TAGS = _discriminator_values(ContentItem) | _discriminator_values(CheckSpec)


def _field_name(location: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for i, part in enumerate(location):
        is_tag = i > 0 and isinstance(location[i - 1], int) and part in _UNION_TAGS
        # Smart-union branches are reported by type name ('SynthModel', 'str', 'list[...]').
        is_branch = isinstance(part, str) and (part[:1].isupper() or "[" in part or part == "str")
        if not (is_tag or is_branch):
            parts.append(str(part))
    return ".".join(parts) or "(top level)"


def load_case(path: Path) -> CaseSpec:
    data = _resolve_includes(path)
    data.setdefault("id", path.stem)
    data["source"] = str(path)
    try:
        return CaseSpec.model_validate(data)
    except ValidationError as exc:
        # The deepest location is the most specific one (union branches report shallower).
        first = max(exc.errors(), key=lambda e: len(e["loc"]))
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise CaseError(
            path, first["msg"] + more, str(data.get("id")), _field_name(first["loc"])
        ) from None


def discover(targets: Iterable[Path]) -> list[Path]:
    """Case files named directly, or the non-underscore *.yaml/*.yml files of directories."""
    files: list[Path] = []
    for target in targets:
        if target.is_dir():
            found = sorted(
                p
                for p in target.iterdir()
                if p.suffix in (".yaml", ".yml") and not p.name.startswith("_")
            )
            if not found:
                raise CaseError(target, "directory holds no case files (*.yaml)")
            files.extend(found)
        else:
            files.append(target)
    return files


def load_cases(targets: Iterable[Path]) -> tuple[list[CaseSpec], list[CaseError]]:
    """Every loadable case and one error per file that is not; ids must be unique."""
    cases: list[CaseSpec] = []
    errors: list[CaseError] = []
    seen: dict[str, str] = {}
    for path in discover(targets):
        try:
            case = load_case(path)
        except CaseError as exc:
            errors.append(exc)
            continue
        if case.id in seen:
            errors.append(
                CaseError(
                    path, f"duplicate id {case.id!r} (also in {seen[case.id]})", case.id, "id"
                )
            )
            continue
        seen[case.id] = case.source
        cases.append(case)
    return cases, errors
