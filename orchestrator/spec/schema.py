"""Turning plain YAML data into typed config dataclasses, collecting every problem on the way.

A field declares its meaning and range through `setting()`. A dataclass may add cross-field rules
in a `problems()` method yielding `(keys, message)`: the message is reported under the first key,
and the rule is skipped when any of its keys already failed on its own.
"""

import dataclasses
import difflib
import types
import typing
from typing import Any, Iterable, Iterator, Literal, Union, get_args, get_origin

MISSING = dataclasses.MISSING


def setting(default: Any = MISSING, *, help: str, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, default_factory: Any = MISSING) -> Any:
    """A dataclass field with a one-line meaning (docs/spec.md is generated from it) and a range."""
    metadata = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def describe_type(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(describe_type(a) for a in inner) + (" or null" if type(None) in args else "")
    if origin is list:
        return f"a list, each {describe_type(args[0])}"
    if origin is dict:
        return "a mapping"
    if origin is tuple:
        kinds = {describe_type(a) for a in args}
        if kinds == {"a number"}:
            return f"a list of {len(args)} numbers"
        return f"a list of {len(args)} items: " + ", ".join(describe_type(a) for a in args)
    if dataclasses.is_dataclass(tp):
        names = [f.name for f in dataclasses.fields(tp)]
        if is_choice(tp):
            return f"a mapping {{{', '.join(names)}}} or a list [{', '.join(names)}]"
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def is_choice(tp: Any) -> bool:
    """A dataclass that a key may take instead of a plain value (`int | WorkerRange`): given as a mapping of its
    fields or as a list of them in order. It is a value, not a section of keys."""
    return dataclasses.is_dataclass(tp) and getattr(tp, "CHOICE", False)


def _given(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})" if value is not None else "null"


class Parser:
    """Builds one dataclass tree from a mapping; `problems` holds every message, each naming its dotted key."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.failed: set[str] = set()

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")
        self.failed.add(path)

    def build(self, cls: type, data: Any, path: str) -> Any:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.fail(path or "(top level)", f"got {_given(data)}; expected a mapping of keys under it")
            return None
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in data:
            if key not in fields:
                self.fail(_join(path, str(key)), _unknown_key(str(key), fields))
        values = {}
        for name, f in fields.items():
            key_path = _join(path, name)
            if name in data:
                parsed = self.value(hints[name], data[name], key_path, f.metadata)
                if key_path not in self.failed:
                    values[name] = parsed
            elif dataclasses.is_dataclass(hints[name]):
                values[name] = self.build(hints[name], {}, key_path)
            elif f.default is MISSING and f.default_factory is MISSING:
                self.fail(key_path, f"missing; expected {describe_type(hints[name])}")
        if any(_join(path, name) in self.failed and f.default is MISSING and f.default_factory is MISSING
               for name, f in fields.items()):
            return None
        obj = cls(**values)  # a field that failed takes its default, so the rules below still run
        self.report(obj.problems() if hasattr(obj, "problems") else (), path)
        return obj

    def report(self, rules: Iterable[tuple[tuple[str, ...], str]], path: str) -> None:
        """Cross-field problems `(keys under path, message)`, each under its first key, unless one of its keys
        failed on its own already."""
        for keys, message in rules:
            full = [_join(path, k) for k in keys]
            if not any(k == bad or k.startswith(bad + ".") for k in full for bad in self.failed):
                self.problems.append(f"{full[0]}: {message}")

    def value(self, tp: Any, value: Any, path: str, metadata: Any = None) -> Any:
        origin, args = get_origin(tp), get_args(tp)
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, path)
        if origin in (Union, types.UnionType):
            if value is None:
                return None
            inner = [a for a in args if a is not type(None)]
            # A mapping or a list picks the union's dataclass, when it has one (`4` or `[1, 8]` or {min: 1, max: 8}).
            chosen = next((a for a in inner if is_choice(a)), None) if isinstance(value, (dict, list)) else None
            if chosen is not None:
                if isinstance(value, list):
                    names = [f.name for f in dataclasses.fields(chosen)]
                    if len(value) != len(names):
                        self.fail(path, f"got {_given(value)}; expected {describe_type(tp)}")
                        return None
                    value = dict(zip(names, value))
                built = self.build(chosen, value, path)
                if built is None or any(bad.startswith(path + ".") for bad in self.failed):
                    self.failed.add(path)
                return built
            plain = next(a for a in inner if not is_choice(a))
            if len(inner) > 1 and get_origin(plain) is None and _scalar(plain, value) is None:
                self.fail(path, f"got {_given(value)}; expected {describe_type(tp)}")  # naming every form
                return value
            return self.value(plain, value, path, metadata)
        if origin is Literal:
            if value in args and type(value) is type(args[0]):
                return value
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            if isinstance(value, bool) and any(isinstance(a, str) for a in args):
                hint = "; YAML reads a bare off/on/no/yes as false/true: quote the word, e.g. \"off\""
            self.fail(path, f"got {_given(value)}; allowed: {', '.join(repr(a) for a in args)}{hint}")
            return args[0]
        if origin is dict:  # free-form below this key: the owning dataclass's problems() checks it
            if not isinstance(value, dict):
                self.fail(path, f"got {_given(value)}; expected {describe_type(tp)}")
                return {}
            return dict(value)
        if origin is list:
            if not isinstance(value, list):
                self.fail(path, f"got {_given(value)}; expected {describe_type(tp)}")
                return []
            items = [self.value(args[0], v, f"{path}[{i}]", metadata) for i, v in enumerate(value)]
            if any(f"{path}[{i}]" in self.failed for i in range(len(value))):
                self.failed.add(path)
            return items
        if origin is tuple:
            if not isinstance(value, (list, tuple)) or len(value) != len(args):
                self.fail(path, f"got {_given(value)}; expected {describe_type(tp)}")
                return None
            items = tuple(self.value(a, v, f"{path}[{i}]", metadata) for i, (a, v) in enumerate(zip(args, value)))
            if any(f"{path}[{i}]" in self.failed for i in range(len(args))):
                self.failed.add(path)
            return items
        parsed = _scalar(tp, value)
        if parsed is None:
            self.fail(path, f"got {_given(value)}; expected {describe_type(tp)}")
            return value
        self.check_range(parsed, path, metadata)
        return parsed

    def check_range(self, value: Any, path: str, metadata: Any) -> None:
        if not metadata or isinstance(value, (bool, str)):
            return
        bounds = [("ge", ">=", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b), ("le", "<=", lambda v, b: v <= b),
                  ("lt", "<", lambda v, b: v < b)]
        for key, symbol, ok in bounds:
            bound = metadata.get(key)
            if bound is not None and not ok(value, bound):
                self.fail(path, f"got {value!r}; must be {symbol} {bound}")


UNUSED = "is not used with "  # how a problem of `ignored` begins, after its key


def ignored(obj: Any, names: tuple[str, ...], setting: str, because: str, fix: str) -> Iterator[tuple[tuple[str, ...], str]]:
    """Problems `(keys, message)` for the fields `names` of dataclass `obj` that hold other than their default while
    its field `setting` (currently `because`, e.g. "train.loss 'hinge'") makes them unused: ignoring them silently
    would hide a mistake."""
    defaults = {f.name: f.default for f in dataclasses.fields(obj)}
    for name in names:
        assert defaults[name] is not MISSING, name
        if getattr(obj, name) != defaults[name]:
            yield (name, setting), f"{UNUSED}{because}; remove it or {fix}"


def _scalar(tp: Any, value: Any) -> Any:
    """The value as type `tp`, or None when it is not one. PyYAML reads `2e-4` as a string, so floats accept numeric strings."""
    if tp is bool:
        return value if isinstance(value, bool) else None
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                parsed = float(value)
            except ValueError:
                return None
            return parsed if parsed == parsed and abs(parsed) != float("inf") else None
        return None
    if tp is str:
        return value if isinstance(value, str) else None
    raise AssertionError(f"schema type {tp} is not supported")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unknown_key(key: str, fields: dict) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key; {hint}(allowed here: {', '.join(fields)})"


def leaf_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, type) of every key below the dataclass `cls` that is not a section of its own."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        nested = [t for t in (hints[f.name], *get_args(hints[f.name])) if dataclasses.is_dataclass(t)
                  and not is_choice(t)]
        if nested:
            yield from leaf_fields(nested[0], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, hints[f.name]


def to_plain(obj: Any) -> Any:
    """A dataclass tree as plain dicts and lists (YAML- and torch.load(weights_only=True)-safe)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}"""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
