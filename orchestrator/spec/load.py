"""Reading a job spec: YAML files, `--set` overrides, plain data; every problem reported at once (SpecError)."""

import copy
from pathlib import Path
from typing import Any

import yaml

from orchestrator.spec.job import JobSpec
from orchestrator.spec.schema import Parser


class SpecError(ValueError):
    """Everything wrong with a job spec, each problem naming its dotted key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}:\n" + "\n".join(f"  - {p}" for p in problems))


def parse(data: Any, source: str = "<spec>") -> JobSpec:
    """A JobSpec from plain data; SpecError listing every problem."""
    parser = Parser()
    spec = parser.build(JobSpec, data, "")
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

