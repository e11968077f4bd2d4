"""What may be logged or printed of a value. One redaction for everything ganorch writes to MLflow (params, tags,
text artifacts, the spec in checkpoints) and to the terminal: credentials in URIs (`s3://KEY:SECRET@bucket`),
secret query parameters (`?X-Amz-Signature=`, `?token=`, `&sig=`), values of keys that name secrets (`password`,
`AWS_SECRET_ACCESS_KEY`), at any depth of dicts and lists."""

import contextlib
import re
import sys
import traceback
from typing import Any, Iterator

import yaml

from orchestrator.spec import JobSpec

MASK = "***"
# A key names a secret when its last word (after `_`, `.`, `-` or a case change) is one of these.
SECRET_WORDS = (r"token|secret|password|passwd|credentials?|signature|sig|auth|authorization|apikey"
                r"|(?:api|access|private|secret|account|client)[_-]?key")
_WORD = rf"(?<![a-zA-Z])(?:{SECRET_WORDS})"  # the name's last word: RAY_AUTH_TOKEN_PATH names a path
SECRET_KEY = re.compile(rf"{_WORD}$", re.IGNORECASE)
QUERY_SECRETS = {"key", "code"}  # query parameters that hold secrets in signed or keyed URLs, as bare words
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/\s@?#'\"]+)@")
_QUERY = re.compile(r"(?P<lead>[?&;])(?P<name>[^=&;\s#'\"]+)=(?P<value>[^&;\s#'\"]*)")
# `NAME=value`, `name: value`, `"name": "value"` in free text (an error message, an environment, JSON), the name
# naming a secret; and an HTTP Authorization header's credentials.
_ASSIGNMENT = re.compile(rf"(?P<name>[\w.-]*{_WORD})(?P<sep>[\"']?[ \t]*[=:][ \t]*[\"']?)"
                         r"(?P<value>[^\s,;'\"}\]&]+)", re.IGNORECASE)
_BEARER = re.compile(r"\b(?P<scheme>Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{16,}")  # not "Token authentication"


def secret_key(key: str) -> bool:
    """Whether a (dotted) key's last part names a secret: `password`, `AWS_SECRET_ACCESS_KEY`, `accessToken`,
    `X-Amz-Signature`; not `keys`, `cache_key`, `tokenizer`, `RAY_AUTH_TOKEN_PATH`."""
    last = str(key).rpartition(".")[2]
    return bool(SECRET_KEY.search(last) or SECRET_KEY.search(re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", last)))


def redact(text: str) -> str:
    """Free text fit to print or log: URI credentials, secret query parameters, `SECRET=value` and bearer tokens
    masked."""
    if not isinstance(text, str):
        text = str(text)
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m['lead']}{m['name']}={MASK}"
                      if secret_key(m["name"]) or m["name"].lower() in QUERY_SECRETS else m[0], text)
    text = _BEARER.sub(lambda m: f"{m['scheme']} {MASK}", text)
    return _ASSIGNMENT.sub(lambda m: f"{m['name']}{m['sep']}{MASK}" if secret_assignment(m) else m[0], text)


def secret_assignment(m: re.Match) -> bool:
    return (secret_key(m["name"]) and not m["name"].endswith(("Error", "Exception", "Warning"))
            and m["value"] != MASK and "://" not in m["value"] and m["value"] not in ("Bearer", "Basic"))


def masked(value: Any, key: str = "") -> Any:
    """`value` with every secret in it masked: under a key that names a secret, the whole value; in strings,
    what `redact` masks; dicts and lists at any depth."""
    if key and secret_key(key) and value not in (None, "", [], {}):
        return MASK
    if isinstance(value, dict):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(masked(v) for v in value)
    return redact(value) if isinstance(value, str) else value


def redact_value(key: str, value: Any) -> str:
    """A param's value fit to log."""
    return str(masked(value, key))


def spec_text(spec: JobSpec) -> str:
    """The spec as YAML, secrets masked."""
    return yaml.safe_dump(masked(spec.to_dict()), sort_keys=False, default_flow_style=None)


class RedactedStream:
    """A text stream (stdout, stderr) that writes what `redact` leaves."""

    def __init__(self, stream: Any):
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(redact(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def redacted_output() -> Iterator[None]:
    """Everything this process prints meanwhile (ganorch's lines, Ray's forwarded worker output) is redacted, and
    so is the traceback of an error that ends it."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactedStream(sys.stdout), RedactedStream(sys.stderr)
    sys.excepthook = redacted_traceback  # it stays: Python prints an uncaught error after this block is left
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def redacted_traceback(kind: type[BaseException], err: BaseException, tb: Any) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(kind, err, tb))))
