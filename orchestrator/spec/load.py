"""Reading a job spec: YAML, `--set` overrides, and the checks that need the whole spec built (every value a
tune.space dimension can take)."""

import copy
from pathlib import Path
from typing import Any, Iterator

import yaml

from orchestrator.spec.job import JobSpec, Problem
from orchestrator.spec.reference import field_reference
from orchestrator.spec.schema import Parser
from orchestrator.spec.search_space import LR_RATIO, apply, parse_dimensions


class SpecError(ValueError):
    """Everything wrong with a job spec, each problem naming its dotted key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}:\n" + "\n".join(f"  - {p}" for p in problems))


def parse(data: Any, source: str = "<spec>") -> JobSpec:
    """A JobSpec from plain data; SpecError listing every problem, the values of tune.space's dimensions included."""
    parser = Parser()
    spec = parser.build(JobSpec, data, "")
    if spec is not None and spec.tune is not None:
        parser.report(space_problems(spec), "tune")
    if parser.problems:
        raise SpecError(source, parser.problems)
    return spec


def load(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """Read a job YAML, apply `key.path=value` overrides, and validate. Raises SpecError listing every problem."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise SpecError(source, ["no such file"])
    if path.is_dir():
        raise SpecError(source, ["is a directory; expected a job YAML file"])
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(source, [f"cannot be read: {err}"]) from None
    if not text.strip():
        raise SpecError(source, ["file is empty; expected a job spec (see jobs/quickstart.yaml)"])
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        raise SpecError(source, [f"not valid YAML{where}: {getattr(err, 'problem', None) or err}"]) from None
    if data is None:
        raise SpecError(source, ["holds no settings; expected a job spec (see jobs/quickstart.yaml)"])
    if not isinstance(data, dict):
        raise SpecError(source, [f"top level is a {type(data).__name__}; expected a mapping of sections (name, model, data, ...)"])
    data = dict(data)
    data.setdefault("name", path.stem)
    return parse_with_overrides(data, overrides, source)


def parse_with_overrides(data: dict, overrides: list[str], source: str) -> JobSpec:
    """`data` (left as it is) with `--set` overrides applied, validated; every problem of both in one SpecError."""
    data = copy.deepcopy(data)
    problems = apply_overrides(data, overrides)
    try:
        spec = parse(data, source)
    except SpecError as err:
        problems += err.problems
    if problems:
        raise SpecError(source, problems)
    return spec


def apply_overrides(data: dict, overrides: list[str]) -> list[str]:
    """Apply `--set a.b=value` overrides in place (value read as YAML); returns problems with the overrides themselves."""
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=100")
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a section")
                break
            node = child
        else:
            node[parts[-1]] = value
    return problems


def space_problems(spec: JobSpec) -> Iterator[Problem]:
    """Everything wrong with `spec.tune.space`, as (keys under `tune`, message). Every value a dimension can take is
    checked by building the job spec with it, so a bad bound or choice gets the message the key itself would."""
    dimensions, shape_problems = parse_dimensions(spec.tune.space)
    yield from shape_problems
    known = {row[0] for row in field_reference() if not row[0].startswith("tune.")}
    keys = {d.key for d in dimensions}
    if LR_RATIO in keys and "optim.d.lr" in keys:
        yield (f"space.{LR_RATIO}",), "sets optim.d.lr from optim.g.lr: do not search optim.d.lr as well"
    base = spec.to_dict()
    for dimension in dimensions:
        where = (f"space.{dimension.key}",)
        if dimension.key not in known | {LR_RATIO}:
            yield where, f"unknown spec key; a dotted key of the job spec (e.g. optim.g.lr) or {LR_RATIO}"
            continue
        if dimension.key == LR_RATIO and not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                                                for v in dimension.values):
            yield where, f"{dimension.kind}: got {list(dimension.values)}; ratios must be numbers > 0"
            continue
        for value in dimension.values:  # a range is checked at both ends
            try:
                parse(apply(base, {dimension.key: value}))
            except SpecError as err:
                yield where, f"{dimension.kind} value {value!r}: " + "; ".join(err.problems)
                break
