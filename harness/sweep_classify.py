"""Classify the verdicts of a sweep (`harness.sweep`) from the verdict data alone: by status,
first difference, first failure and, for errors, the reason's prefix; and separate the
disagreements the two libraries are known to have from suspected add-on or harness bugs.

Known disagreements (not add-on bugs):
- rendering: mlx-vlm's processor joins several text items of one message with a space
  where the chat template joins them with nothing, and moves an image of a system or
  assistant turn to the last user turn (a template that drops such an image leaves the
  unified path a prompt without its placeholder, which it refuses). Seen as a first
  difference at `input_ids` with differing rendered prompts (`Verdict.prompt_texts`), or as
  the placeholder-count error.
- schedule: mlx-lm's loop runs the last prompt token alone while native may run the prompt
  in one call (`explain.schedule_note`): with equal ids, float32 prompts longer than the
  sliding window can then differ by ~1e-6 under `exact`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from .explain import schedules
from .records import Status, Verdict

# Exception types whose appearance in a reason means an unhandled bug rather than an
# explained refusal: the reason is one line and names the file, but says nothing useful.
INTERNAL_ERRORS = (
    "AssertionError",
    "AttributeError",
    "IndexError",
    "KeyError",
    "NameError",
    "RecursionError",
    "TypeError",
    "UnboundLocalError",
    "ZeroDivisionError",
    "NotImplementedError",
)
_PLACEHOLDERS = re.compile(r"rendered prompt has \d+ image placeholder\(s\) for \d+ image\(s\)")
_NUMBER = re.compile(r"\d+(\.\d+)?(e-?\d+)?")
_IMAGE_PLACEHOLDER = "<|image|>"

EXPECTED = {"rendering", "schedule"}
# Category -> one line for the printed legend.
LEGEND = {
    "rendering": "expected: the paths rendered different prompts (text items joined with a "
    "space, an image moved out of a system/assistant turn or dropped by the template)",
    "schedule": "expected: same ids, different prefill schedules (exact parity holds only "
    "for equal schedules)",
    "ids": "SUSPECT: same rendered prompt, different input_ids (tokenization or image "
    "placeholder expansion)",
    "addon": "SUSPECT: same ids and same prefill schedule, and still not PASS",
    "error": "SUSPECT: a clear error on a valid generated case",
    "unclear": "BUG: an error that names the file but only an internal exception",
    "crash": "BUG: an error that is not one line naming the case file",
    "skip": "skipped",
}


def is_crash(verdict: Verdict) -> bool:
    """An ERROR whose reason is not one clear line naming the case file."""
    if verdict.status is not Status.ERROR:
        return False
    reason = verdict.reason
    if "\n" in reason or "\r" in reason or not reason.startswith(verdict.source):
        return True
    return not reason[len(verdict.source) :].lstrip(": ").strip()


def reason_message(verdict: Verdict) -> str:
    """The reason without its leading case file."""
    reason = verdict.reason
    if reason.startswith(verdict.source):
        reason = reason[len(verdict.source) :]
    return reason.lstrip(": ").strip()


def is_unclear(verdict: Verdict) -> bool:
    """A crash, or an error that only names an internal exception (`KeyError: 'x'`)."""
    if is_crash(verdict):
        return True
    if verdict.status is not Status.ERROR:
        return False
    message = reason_message(verdict)
    return any(re.search(rf"(^|: ){name}(:|$)", message) for name in INTERNAL_ERRORS)


def reason_prefix(verdict: Verdict, width: int = 72) -> str:
    """The reason's message with numbers as N, cut to `width`: groups like errors."""
    if not verdict.reason:
        return ""
    message = _NUMBER.sub("N", reason_message(verdict) or verdict.reason.splitlines()[0])
    return message if len(message) <= width else message[: width - 3] + "..."


def _without_spaces(text: str) -> str:
    return re.sub(r"\s+", "", text)


def rendering_kind(prompts: tuple[str, ...]) -> str:
    """How two rendered prompts differ: 'text items joined' (only whitespace), 'image
    moved' (same placeholders, same text around them), or 'other'."""
    if len(prompts) != 2 or prompts[0] == prompts[1]:
        return ""
    reference, candidate = prompts
    if _without_spaces(reference) == _without_spaces(candidate):
        return "text items joined"
    same_count = reference.count(_IMAGE_PLACEHOLDER) == candidate.count(_IMAGE_PLACEHOLDER)
    bare = [_without_spaces(p.replace(_IMAGE_PLACEHOLDER, "")) for p in prompts]
    if same_count and bare[0] == bare[1]:
        return "image moved"
    return "other"


def same_schedule(verdict: Verdict) -> bool:
    reference, candidate = schedules(verdict)
    return reference == candidate


def classify(verdict: Verdict) -> tuple[str, str]:
    """(category, detail) of one verdict; ('pass', '') for a PASS."""
    if verdict.status is Status.PASS:  # within tolerance is not bit-exact: say where
        return "pass", f"tolerated difference at {verdict.first_difference}" * bool(
            verdict.first_difference
        )
    if verdict.status is Status.SKIP:
        return "skip", reason_prefix(verdict)
    if verdict.status is Status.ERROR:
        if is_crash(verdict):
            return "crash", reason_prefix(verdict)
        if is_unclear(verdict):
            return "unclear", reason_prefix(verdict)
        if _PLACEHOLDERS.search(verdict.reason):
            return "rendering", "image dropped by the chat template"
        return "error", reason_prefix(verdict)
    if verdict.first_difference == "input_ids":
        kind = rendering_kind(verdict.prompt_texts)
        if kind:
            return "rendering", kind
        return "ids", "same rendered prompt"
    if not same_schedule(verdict):
        reference, candidate = (len(s.split(",")) for s in schedules(verdict))
        return "schedule", f"{reference} vs {candidate} prefill call(s)"
    # The failed check and metric ('exact max_abs_diff'), without the case's numbers.
    return "addon", verdict.first_failure_detail.partition("=")[0] or "no gating failure"


def addon_claim_holds(verdict: Verdict) -> bool | None:
    """The bundled add-on's claim: PASS wherever both paths rendered the same ids and ran
    the same prefill schedule. None where the claim says nothing (known disagreements,
    skips); False for a failure under equal ids and schedules, a suspect error, a crash."""
    category, _ = classify(verdict)
    if category in ("pass",):
        return True
    if category in EXPECTED or category == "skip":
        return None
    return False


def rows(verdicts: Iterable[Verdict], knobs: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """One JSON-able row per verdict: the classification and the case's generated knobs."""
    out = []
    for v in verdicts:
        category, detail = classify(v)
        reference, candidate = schedules(v)
        k = knobs.get(v.case_id, {})
        out.append(
            {
                "case_id": v.case_id,
                "source": v.source,
                "status": v.status.value,
                "category": category,
                "expected": category in EXPECTED,
                "suspect": category not in EXPECTED | {"pass", "skip"},
                "detail": detail,
                "first_difference": v.first_difference,
                "first_difference_detail": v.first_difference_detail,
                "first_failure": v.first_failure,
                "first_failure_detail": v.first_failure_detail,
                "reason": v.reason,
                "reason_prefix": reason_prefix(v),
                "reference_prefill_chunks": reference,
                "candidate_prefill_chunks": candidate,
                "reference_prompt": v.prompt_texts[0] if v.prompt_texts else None,
                "candidate_prompt": v.prompt_texts[1] if v.prompt_texts else None,
                "checkpoint": k.get("checkpoint"),
                "model_options": dict(k.get("model_options", {})),
                "layout": k.get("layout"),
                "text": k.get("text"),
                "images": list(k.get("images", [])),
                "prefill_step_size": k.get("prefill_step_size"),
                "profile": k.get("profile"),
                "duration": v.duration,
            }
        )
    return out


TABLE_KEYS = ("status", "category", "first_difference", "first_failure", "detail")


def count_table(classified: Iterable[Mapping[str, Any]]) -> list[dict]:
    """Counts of non-PASS rows by status x category x first difference x first failure x
    detail (the reason prefix for errors, the kind of rendering difference, ...)."""
    counts = Counter(
        tuple(r[k] or "-" for k in TABLE_KEYS) for r in classified if r["status"] != "pass"
    )
    return [
        {**dict(zip(TABLE_KEYS, key, strict=True)), "count": n}
        for key, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    ]


def format_table(table: list[dict], width: int = 60) -> str:
    if not table:
        return "every case passed"
    keys = ("count", *TABLE_KEYS)
    cells = [[str(row[k])[:width] for k in keys] for row in table]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)) for cell in cells)
    return "\n".join(line.rstrip() for line in lines)
