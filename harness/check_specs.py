"""The case-file specs of the checks: pydantic models validating a check's parameters
(`check:` names the check) whose `.build()` returns the comparator from harness.checks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from .checks import (
    Comparator,
    allclose,
    exact,
    jaccard,
    kl_divergence,
    layer_stats,
    max_delta_p,
    top1_agreement,
    topk,
    within_ulps,
)


class _CheckSpec(BaseModel):
    # Finite numbers only: `atol: .inf` would make a gating check that cannot fail (a
    # threshold left unset is the one place an infinity means "not checked").
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    # A diagnostic (gate: false) is reported and locates divergence but never fails a case.
    gate: bool = True


class ExactSpec(_CheckSpec):
    check: Literal["exact"] = "exact"

    def build(self) -> Comparator:
        return exact()


class AllcloseSpec(_CheckSpec):
    check: Literal["allclose"] = "allclose"
    atol: float = Field(ge=0)
    rtol: float = Field(0.0, ge=0)

    def build(self) -> Comparator:
        return allclose(self.atol, self.rtol)


class UlpSpec(_CheckSpec):
    check: Literal["ulp"] = "ulp"
    ulps: float = Field(1.0, ge=0)

    def build(self) -> Comparator:
        return within_ulps(self.ulps)


class TopkSpec(_CheckSpec):
    check: Literal["topk"] = "topk"
    k: int = Field(5, ge=1)
    order: bool = True
    prob_rtol: float = Field(0.25, ge=0)
    ref_floor: float = Field(1e-3, gt=0)
    tie_ulps: float = Field(1.0, ge=0, description="near-tie bound in ulps of the logits dtype")
    tie_margin: float = Field(0.0, ge=0, description="near-tie bound in logits, if larger")

    def build(self) -> Comparator:
        return topk(
            self.k, self.order, self.prob_rtol, self.ref_floor, self.tie_ulps, self.tie_margin
        )


class StatsSpec(_CheckSpec):
    check: Literal["stats"] = "stats"
    max_abs: float = Field(0.0, ge=0)
    max_nmse: float = Field(float("inf"), ge=0)
    max_cosine_distance: float = Field(float("inf"), ge=0)

    def build(self) -> Comparator:
        return layer_stats(self.max_abs, self.max_nmse, self.max_cosine_distance)


class KlSpec(_CheckSpec):
    check: Literal["kl"] = "kl"
    max: float = Field(1e-3, ge=0)

    def build(self) -> Comparator:
        return kl_divergence(self.max)


class Top1Spec(_CheckSpec):
    check: Literal["top1"] = "top1"

    def build(self) -> Comparator:
        return top1_agreement()


class JaccardSpec(_CheckSpec):
    check: Literal["jaccard"] = "jaccard"
    k: int = Field(5, ge=1)
    min: float = Field(1.0, gt=0, le=1, description="> 0: a distance of 1 must fail")

    def build(self) -> Comparator:
        return jaccard(self.k, self.min)


class DeltaPSpec(_CheckSpec):
    check: Literal["max_delta_p"] = "max_delta_p"
    max: float = Field(0.05, ge=0, lt=1, description="< 1: no probability moves by more")

    def build(self) -> Comparator:
        return max_delta_p(self.max)


CheckSpec = Annotated[
    ExactSpec
    | AllcloseSpec
    | UlpSpec
    | TopkSpec
    | StatsSpec
    | KlSpec
    | Top1Spec
    | JaccardSpec
    | DeltaPSpec,
    Field(discriminator="check"),
]
