"""Case files: YAML validated into frozen, typed CaseSpec objects.

Case files are data, possibly from an untrusted pull request: reading them (regular files
only, size-capped, UTF-8, no aliases or duplicate keys, includes confined to the cases
root) lives in `case_yaml`. A file may `include:` other files (paths relative to it);
included mappings are merged first and the file's own keys win. Files whose name starts
with `_` are shared bases and are not cases themselves when a directory is scanned. Errors
are one line naming the file and the field.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .case_discovery import discover  # noqa: F401  (re-exported)
from .case_yaml import (  # noqa: F401  (IMAGE_FORMATS, restrict_image_formats: re-exported)
    IMAGE_FORMATS,
    CaseError,
    IncludeResolver,
    image_problem,
    restrict_image_formats,
    safe_key,
    scrub,
    valid_id,
)
from .check_specs import CheckSpec
from .paths import BUILTIN as BUILTIN_PATHS
from .profiles import DECODE_FOLLOWS, PROFILES, Profile
from .records import STAGE_ORDER

# Above this many pixels an image is refused before decoding (3000x2000 photos, 6 MP, and
# 8K frames, 33 MP, are fine); PIL's own decompression-bomb limit is higher.
MAX_IMAGE_PIXELS = 50_000_000

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_\-]{1,64}")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_OBJECT_NAME = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}")


def _registry_name(value: str) -> str:
    """Names reach importlib: a registry name is one plain word, anything else is
    'package.module:Class' made of identifiers (no '../x', no 'a.b' lookups)."""
    if ":" in value:
        if len(value) > 200 or not _OBJECT_NAME.fullmatch(value):
            raise ValueError("must be 'package.module:Class' (dotted identifiers)")
    elif not _PLAIN_NAME.fullmatch(value):
        raise ValueError("must be a registry name (letters, digits, _ and -) or 'module:Class'")
    return value


RegistryName = Annotated[str, AfterValidator(_registry_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SynthModel(_Strict):
    synth: str = Field(description="model_type of a synthesizer in harness/synth/")
    options: dict[str, Any] = Field(default_factory=dict)


class LocalModel(_Strict):
    path: str = Field(description="checkpoint directory; relative paths start at the case file")


# Hugging Face repo ids ('name' or 'namespace/name') and revisions (branch, tag, commit):
# they become paths in the local cache, so no '..', no '--', nothing else.
_HF_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?"
_HF_REPO = re.compile(rf"(?:{_HF_PART}/)?{_HF_PART}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9][A-Za-z0-9_.\-]*)*")


def _hf_repo(value: str) -> str:
    if not _HF_REPO.fullmatch(value) or ".." in value or "--" in value or value.endswith(".git"):
        raise ValueError("must be a Hugging Face repo id (name, or namespace/name)")
    return value


def _revision(value: str | None) -> str | None:
    if value is not None and (len(value) > 255 or not _REVISION.fullmatch(value) or ".." in value):
        raise ValueError("must be a branch, tag or commit of the repo")
    return value


class HubModel(_Strict):
    hf: Annotated[str, AfterValidator(_hf_repo)] = Field(
        description="repo id, looked up in the local Hugging Face cache only"
    )
    revision: Annotated[str | None, AfterValidator(_revision)] = None


def _model_kind(value: Any) -> str | None:
    """Which of synth/path/hf a model names: errors then name that kind's fields."""
    if isinstance(value, Mapping):
        kinds = [kind for kind in ("synth", "path", "hf") if kind in value]
        return kinds[0] if len(kinds) == 1 else None
    kinds = {SynthModel: "synth", LocalModel: "path", HubModel: "hf"}
    return kinds.get(type(value))


ModelSpec = Annotated[
    Annotated[SynthModel, Tag("synth")]
    | Annotated[LocalModel, Tag("path")]
    | Annotated[HubModel, Tag("hf")],
    Discriminator(
        _model_kind,
        custom_error_type="model_kind",
        custom_error_message="must name exactly one of synth, path or hf",
    ),
]


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
    reference: RegistryName = "mlx-vlm"
    candidate: RegistryName = "unified"
    # A third opinion (e.g. transformers): compared with both under `third_profile`, each
    # pair reported per stage (harness.three_way).
    third: RegistryName | None = None

    @model_validator(mode="after")
    def _two_paths(self) -> PathPair:
        same = BUILTIN_PATHS.get(self.reference, self.reference)
        if same == BUILTIN_PATHS.get(self.candidate, self.candidate):
            raise ValueError("reference and candidate are the same path: it would pass unchecked")
        if self.third is not None:
            third = BUILTIN_PATHS.get(self.third, self.third)
            if third in (same, BUILTIN_PATHS.get(self.candidate, self.candidate)):
                raise ValueError("third must differ from reference and candidate")
        return self

    def names(self) -> tuple[str, ...]:
        return (self.reference, self.candidate, *((self.third,) if self.third else ()))


class KnownDeviation(_Strict):
    """Two paths are known to differ from `stage` on, for `reason`: that pair's rows from
    the stage on are reported, not gating, and a `known_deviation` row says whether the
    deviation was found there (harness.three_way). `paths` defaults to every compared pair
    that includes the case's authority."""

    stage: str
    reason: str = Field(min_length=1, max_length=500)
    paths: tuple[RegistryName, RegistryName] | None = None

    @field_validator("reason")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return " ".join(value.split())  # folded YAML leaves a trailing newline

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        if value not in STAGE_ORDER:
            known = ", ".join(STAGE_ORDER)
            raise ValueError(f"unknown stage {safe_key(value)}; stages are {known}")
        return value


# Arguments the harness passes to apply_chat_template itself, or that change what it
# returns or make it read media: a case cannot set them.
RESERVED_TEMPLATE_KWARGS = frozenset(
    {
        "conversation", "messages", "tokenize", "add_generation_prompt",
        "continue_final_message", "return_dict", "return_tensors",
        "return_assistant_tokens_mask", "padding", "padding_side", "truncation",
        "max_length", "tokenizer_kwargs", "processor_kwargs", "images", "image", "audio",
        "videos", "video", "fps", "load_audio_from_video", "num_images", "num_audios",
        "pad_to_uniform_size", "resize_shape", "return_mm_token_type_ids",
    }
)  # fmt: skip


def _template_kwargs(value: dict[str, Any]) -> dict[str, Any]:
    reserved = sorted(RESERVED_TEMPLATE_KWARGS & set(value))
    if reserved:
        raise ValueError(
            f"{', '.join(reserved)}: set by the harness itself, not by a case "
            "(chat_template_kwargs are extra variables for the chat template)"
        )
    return value


# Measured here (bf16 tiny checkpoints, 5 greedy steps): 0.011 (gemma4_text), 0.030
# (gemma4_sliding_window_text), 0.026 (gemma3_text); about 2x the largest. mlx-engine's
# own bound is 0.125.
BATCH_LOGPROB_TOLERANCE = 0.0625


class PromptCacheSpec(_Strict):
    # Prefill chunks (of prefill_step_size tokens) served from the restored cache: the
    # boundary is a chunk edge, so both runs share one chunk schedule.
    prefix_chunks: int = Field(ge=1, le=4096)


class BatchSpec(_Strict):
    # Max |difference| of the selected tokens' log-probabilities, batched vs alone.
    # Default measured on the shipped text cases (BATCH_LOGPROB_TOLERANCE).
    logprob_tolerance: float = Field(BATCH_LOGPROB_TOLERANCE, ge=0.0, allow_inf_nan=False)


# Stages every path captures for every model (per-layer probes can be off; other stages
# exist only for some architectures): at least one gating check must be on one of them.
ALWAYS_CAPTURED = ("input_ids", "embeddings", "logits")
PositiveInt = Annotated[int, Field(ge=1)]


class CaseSpec(_Strict):
    id: str = Field(min_length=1, max_length=128)
    source: str
    description: str = ""
    model: ModelSpec
    messages: list[Message] = Field(min_length=1)
    chat_template_kwargs: Annotated[dict[str, Any], AfterValidator(_template_kwargs)] = Field(
        default_factory=lambda: {"enable_thinking": False}
    )
    prefill_step_size: int = Field(2048, ge=1)
    max_size: tuple[PositiveInt, PositiveInt] | None = None
    paths: PathPair = PathPair()
    addon: RegistryName = Field("auto", description="registry name, 'module:Class', or auto")
    profile: Literal["exact", "image", "cross"] | None = None
    tolerances: dict[str, list[CheckSpec]] = Field(default_factory=dict)
    markers: list[str] = Field(default_factory=list)
    trust_remote_code: bool = False
    # Draws of the noise envelope (harness.envelope) when the first difference is a
    # tolerated one at the embeddings; 0 turns it off.
    noise_envelope: int = Field(3, ge=0, le=16)
    # Greedy decode steps after the first token, compared as stages decode.1 ... decode.N
    # (2 as in mlx-engine's own parity tests); 0 stops at the first token.
    decode_steps: int = Field(2, ge=0, le=64)
    # Capture the case a second time in the candidate's session after it served other
    # prompts, and fail (`session_state`) on any difference (harness.session_state).
    session_state: bool = False
    # Capture the case again with its first chunks from a saved and reloaded prompt cache,
    # and fail (`prompt_cache`) on any difference (harness.prompt_cache).
    prompt_cache: PromptCacheSpec | None = None
    # Generate the case batched with another request (mlx-lm's batch generator) and fail
    # (`batch`) unless the tokens are equal and the logprobs within tolerance.
    batch: BatchSpec | None = None
    # Which path is right where paths disagree (default: the third path, else the
    # reference), the deviations from it that are known, and the profile pairs with the
    # third path are held to (harness.three_way).
    authority: RegistryName | None = None
    known_deviations: list[KnownDeviation] = Field(default_factory=list, max_length=16)
    third_profile: Literal["exact", "image", "cross"] = "cross"

    @field_validator("authority")
    @classmethod
    def _authority_is_a_case_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        paths = info.data.get("paths")
        if value is not None and paths is not None and value not in paths.names():
            raise ValueError(f"{value!r} is not one of the case's paths")
        return value

    @field_validator("known_deviations")
    @classmethod
    def _deviations_name_case_paths(
        cls, value: list[KnownDeviation], info: ValidationInfo
    ) -> list[KnownDeviation]:
        paths = info.data.get("paths")
        if paths is None or "authority" not in info.data:
            return value  # their own errors are reported
        names = paths.names()
        authority = info.data["authority"] or paths.third or paths.reference
        for deviation in value:
            pair = deviation.paths
            if pair is not None and (pair[0] == pair[1] or not set(pair) <= set(names)):
                raise ValueError(f"paths {list(pair)} must be two of the case's paths")
            main = set(names[:2])
            on_main = set(pair) == main if pair is not None else authority in main
            if deviation.stage == "input_ids" and on_main:
                raise ValueError(
                    "a deviation at input_ids between reference and candidate would leave "
                    "nothing gating"
                )
        return value

    @property
    def authority_path(self) -> str:
        return self.authority or self.paths.third or self.paths.reference

    @field_validator("id")
    @classmethod
    def _id_is_a_file_name(cls, value: str) -> str:
        # Ids become file names (--keep-tensors writes captures/<id>/).
        if not valid_id(value):
            raise ValueError(
                "must be letters, digits, _ - and ., not start with . or -, and not contain .."
            )
        return value

    @field_validator("tolerances", mode="before")
    @classmethod
    def _single_check_as_list(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: [v] if isinstance(v, Mapping) else v for k, v in value.items()}
        return value

    @field_validator("tolerances")
    @classmethod
    def _known_stages(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        unknown = sorted({safe_key(k) for k in set(value) - set(STAGE_ORDER)})
        if unknown:
            known = ", ".join(STAGE_ORDER)
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages are {known}")
        if "messages" in info.data and "profile" in info.data:
            has_images = any(
                isinstance(item, ImageItem)
                for m in info.data["messages"]
                if not isinstance(m.content, str)
                for item in m.content
            )
            name = info.data["profile"] or ("image" if has_images else "exact")
            effective = {**PROFILES[name], **value}
            if not any(spec.gate for stage in ALWAYS_CAPTURED for spec in effective[stage]):
                raise ValueError(
                    "no gating check on input_ids, embeddings or logits: the case would pass "
                    "without comparing anything (gate: true on at least one check)"
                )
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

    def resolve_image(self, name: str, field: str = "messages") -> Path:
        path = Path(name)
        if path.is_absolute():
            return path
        try:
            resolved = (self.base_dir / path).resolve()
        except (OSError, ValueError, RuntimeError):  # NUL in the name, symlink loop
            raise CaseError(self.source, "not a usable file name", self.id, field) from None
        if not resolved.is_relative_to(self.base_dir):
            raise CaseError(
                self.source,
                f"image {name!r} escapes {self.base_dir}; give an "
                "absolute path to use a file elsewhere",
                self.id,
                field,
            )
        return resolved

    def check_images(self, *, max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        """Every image is a regular file that decodes, with at most `max_pixels` pixels
        (`MAX_IMAGE_PIXELS`, 50 MP: 3000x2000 photos and 8K frames are fine). The size comes
        from the header: a larger image is refused without decoding it. Errors name the
        exact field (`messages.I.content.J.image`)."""
        for i, message in enumerate(self.messages):
            if isinstance(message.content, str):
                continue
            for j, item in enumerate(message.content):
                if isinstance(item, ImageItem):
                    field = f"messages.{i}.content.{j}.image"
                    self._check_image(self.resolve_image(item.image, field), field, max_pixels)

    def _check_image(self, path: Path, field: str, max_pixels: int) -> None:
        problem = image_problem(path, max_pixels)
        if problem:
            raise CaseError(self.source, problem, self.id, field)

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
        checks = {**PROFILES[name], **{k: tuple(v) for k, v in self.tolerances.items()}}
        checks.setdefault("decode", checks[DECODE_FOLLOWS])
        return checks

    def model_label(self) -> str:
        spec = self.model
        if isinstance(spec, SynthModel):
            options = ",".join(f"{k}={v}" for k, v in sorted(spec.options.items()))
            return f"synth:{spec.synth}({options})"
        return f"path:{spec.path}" if isinstance(spec, LocalModel) else f"hf:{spec.hf}"

    def model_key(self) -> str:
        return json.dumps(self.model.model_dump(mode="json"), sort_keys=True)


def _discriminator_values(annotated: Any) -> set[str]:
    union, info = get_args(annotated)[:2]
    return {get_args(m.model_fields[info.discriminator].annotation)[0] for m in get_args(union)}


# Discriminator values pydantic inserts into error locations after a list index.
_UNION_TAGS = _discriminator_values(ContentItem) | _discriminator_values(CheckSpec)


def _field_name(location: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for i, part in enumerate(location):
        is_tag = i > 0 and isinstance(location[i - 1], int) and part in _UNION_TAGS
        is_tag |= i == 1 and location[0] == "model" and len(location) > 2  # its kind's tag
        # Smart-union branches are reported by type name ('SynthModel', 'str', 'list[...]').
        is_branch = isinstance(part, str) and (part[:1].isupper() or "[" in part or part == "str")
        if not (is_tag or is_branch):
            parts.append(safe_key(part))  # keys come from the data: never echo odd ones
    return ".".join(parts) or "(top level)"


def load_case(
    path: Path, *, include_roots: Sequence[Path] = (), root: Path | None = None
) -> CaseSpec:
    """One case file. It and its includes must resolve inside `root` (default: the file's
    directory) or one of `include_roots`."""
    data = IncludeResolver([path.parent if root is None else root, *include_roots]).load(path)
    data.setdefault("id", path.stem)
    data["source"] = str(path)
    case_id = data["id"] if isinstance(data["id"], str) else None
    try:
        return CaseSpec.model_validate(data)
    except ValidationError as exc:
        # The deepest location is the most specific one (union branches report shallower).
        first = max(exc.errors(), key=lambda e: len(e["loc"]))
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = scrub(first["msg"]) + more
        raise CaseError(path, message, case_id, _field_name(first["loc"])) from None


def load_cases(
    targets: Iterable[Path], *, include_roots: Sequence[Path] = ()
) -> tuple[list[CaseSpec], list[CaseError]]:
    """Every loadable case and one error per file (or target) that is not; ids must be
    unique. Includes stay inside the cases root (a directory target, or a file target's
    directory) unless `include_roots` (`--allow-include DIR`) widens it."""
    cases: list[CaseSpec] = []
    errors: list[CaseError] = []
    seen: dict[str, str] = {}
    for target in targets:
        for path in discover([target], errors):
            root = target if os.path.isdir(target) else target.parent
            try:
                case = load_case(path, include_roots=include_roots, root=root)
            except CaseError as exc:
                errors.append(exc)
                continue
            except Exception as exc:  # a case file is data: never abort the other cases
                errors.append(CaseError(path, f"cannot load ({type(exc).__name__})"))
                continue
            if case.id in seen:
                message = f"duplicate id {case.id!r} (also in {seen[case.id]})"
                errors.append(CaseError(path, message, case.id, "id"))
                continue
            seen[case.id] = case.source
            cases.append(case)
    return cases, errors
