"""What may be logged or printed of a value: values of keys that name secrets, and credentials in URIs, are masked."""

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from orchestrator.spec import JobSpec

# Keys whose values are never logged (param values, spec.yaml): they name secrets.
SECRET_KEY = re.compile(r"token|key|secret|password|passwd|credential", re.IGNORECASE)


def redact_value(key: str, value: Any) -> str:
    """A param's value fit to log: masked when its key names a secret, credentials masked in a URI."""
    if SECRET_KEY.search(key.rpartition(".")[2]):
        return "***"
    return redact(value) if isinstance(value, str) and "://" in value else str(value)


def redact(uri: str) -> str:
    """A URI fit to print or log: credentials in it (https://user:password@host) are masked."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def spec_text(spec: JobSpec) -> str:
    """The spec as YAML, with what `redact_value` masks masked."""
    def masked(data: dict[str, Any]) -> dict[str, Any]:
        return {k: masked(v) if isinstance(v, dict) else
                (redact_value(k, v) if SECRET_KEY.search(k) or (isinstance(v, str) and "://" in v) else v)
                for k, v in data.items()}

    return yaml.safe_dump(masked(spec.to_dict()), sort_keys=False, default_flow_style=None)
