"""Reaching a Ray cluster's job server: its address, Ray's token (looked up as Ray does), and a client that was let in."""

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # where `ray dashboard cluster.yaml` forwards the head's job server
CONNECT_TIMEOUT_S = 10.0


def address_of(flag: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS or an http RAY_ADDRESS (as Ray's own `ray job` reads them), else
    the local port `ray dashboard` forwards."""
    ray_address = os.environ.get("RAY_ADDRESS", "")
    address = (flag or os.environ.get("RAY_API_SERVER_ADDRESS")
               or (ray_address if ray_address.startswith("http") else None) or DEFAULT_ADDRESS)
    return address if "://" in address else f"http://{address}"


def token() -> tuple[str | None, str]:
    """Ray's token, looked up as Ray does (RAY_AUTH_TOKEN, then the file at RAY_AUTH_TOKEN_PATH, then
    ~/.ray/auth_token), and where it came from. Sent whether or not RAY_AUTH_MODE is set here: the cluster
    decides whether it needs one."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), "the token in RAY_AUTH_TOKEN"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if os.environ.get("RAY_AUTH_TOKEN_PATH") and not path.is_file():
        raise ValueError(f"RAY_AUTH_TOKEN_PATH: no token file {path}")
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip(), f"the token in {path}"
    return None, "no token (none in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"


def connect(address: str) -> Any:
    """A JobSubmissionClient that reached the job server and was let in; ValueError saying why not."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    secret, source = token()
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    unreachable = ValueError(f"cannot reach Ray's job server at {address}: is the cluster up, and for cluster.yaml "
                             "is `ray dashboard cluster.yaml` forwarding its port 8265 here? (--address, or "
                             "RAY_API_SERVER_ADDRESS, names another)")
    try:  # Ray's client would wait on an address that never answers for as long as TCP does
        parts = urlsplit(address)
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError):
        raise unreachable from None
    try:
        return JobSubmissionClient(address, headers=headers)
    except AuthenticationError as err:
        reason = str(err).splitlines()[0]
        raise ValueError(f"Ray's job server at {address} refused {source} ({reason}); get the cluster's token "
                         "with `ray get-auth-token` on its head and put it in RAY_AUTH_TOKEN or ~/.ray/auth_token") \
            from None
    except ConnectionError:
        raise unreachable from None
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{address} does not answer as Ray's job server: {err}") from None
