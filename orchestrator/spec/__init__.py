"""The job spec: typed dataclasses read from `jobs/*.yaml`, their schema, the tune space and the generated reference.
May import nothing else of ganorch, and neither Ray, MLflow nor torch: a spec is checked before any of them loads."""

from orchestrator.spec.job import (
    DataSpec,
    EvalSpec,
    JobSpec,
    ModelSpec,
    OptimSpec,
    ResourcesSpec,
    TrackingSpec,
    TrainSpec,
    TuneSpec,
)
from orchestrator.spec.load import SpecError, apply_overrides, load, parse, parse_with_overrides
from orchestrator.spec.reference import field_reference

__all__ = ["DataSpec", "EvalSpec", "JobSpec", "ModelSpec", "OptimSpec", "ResourcesSpec", "SpecError", "TrackingSpec",
           "TrainSpec", "TuneSpec", "apply_overrides", "field_reference", "load", "parse", "parse_with_overrides"]
