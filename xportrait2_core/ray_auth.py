"""Token authentication for every Ray cluster the pack starts or joins.

A Ray cluster runs whatever code reaches it, so the pack runs Ray only with token authentication
(Ray 2.52 and later) and never turns it off. The token has one source, in Ray's own order: the
``RAY_AUTH_TOKEN`` variable if it is set, else the file that ``RAY_AUTH_TOKEN_PATH`` names, else
``~/.ray/auth_token``. The pack sets ``RAY_AUTH_MODE=token`` and names that file to Ray itself, for
this process and every Ray process it starts, so a token file left by an earlier run is neither
picked up by surprise nor the cause of a failure that does not say so: a cluster that refuses the
token gets one line naming the file (or variable) the token came from.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

logger = logging.getLogger(__name__)

MODE = "RAY_AUTH_MODE"
TOKEN = "RAY_AUTH_TOKEN"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
PROBE_TIMEOUT = 60.0
# A GCS client in a separate process: it connects and makes one call (no driver, no job); with
# RAY_AUTH_MODE=disabled it sends no token.
_PROBE = """
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1]).internal_kv_get(b"xportrait2-probe", None, timeout=10)
    print("open")
except Exception as error:
    print("refused" if "uthenticat" in str(error) else "unreachable: " + str(error).splitlines()[0])
"""


class RayAuthError(RuntimeError):
    """Token authentication cannot be set up, or a cluster refused the token; one line."""


@dataclass(frozen=True)
class TokenSource:
    """Where this process's Ray token comes from: the variable, or a file."""

    path: Optional[Path]  # None: the RAY_AUTH_TOKEN variable

    def describe(self) -> str:
        return f"the {TOKEN} variable" if self.path is None else str(self.path)


def token_source() -> TokenSource:
    if os.environ.get(TOKEN):
        return TokenSource(None)
    return TokenSource(Path(os.environ.get(TOKEN_PATH) or Path.home() / ".ray" / "auth_token").expanduser())


def require_token_auth(new_cluster: bool) -> TokenSource:
    """Turn token authentication on for this process and what it starts, with one token source.

    For a new cluster a missing token file is created (random, readable by its owner only); a
    cluster to join needs the token it was started with, so there a missing one is an error."""
    mode = os.environ.get(MODE)
    if mode is not None and mode.lower() != "token":
        raise RayAuthError(
            f"{MODE}={mode}: xportrait2 runs Ray only with token authentication (a Ray cluster runs any code "
            f"that reaches it); unset {MODE}"
        )
    source = token_source()
    if source.path is not None and not source.path.is_file():
        if not new_cluster:
            raise RayAuthError(
                f"no Ray token in {source.path} (nor in {TOKEN}): copy the token the cluster was started with there "
                f"(`ray get-auth-token` on its head node prints it), or set {TOKEN_PATH} to a file holding it"
            )
        _write_new_token(source.path)
    os.environ[MODE] = "token"
    if source.path is not None:
        os.environ[TOKEN_PATH] = str(source.path)
    _reload_ray_settings()
    logger.info("Ray token authentication, with the token from %s", source.describe())
    return source


def _write_new_token(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_hex(32))
    logger.info("created a Ray authentication token in %s", path)


def _reload_ray_settings() -> None:
    """Ray reads the mode and the token once per process; if it is imported already, read again."""
    raylet = sys.modules.get("ray._raylet")
    if raylet is None:
        return
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()


def refused(error: BaseException) -> bool:
    """Whether a failed connection was the cluster refusing the token (Ray chains the cause)."""
    while error is not None:
        if type(error).__name__ == "AuthenticationError" or "Authentication token is missing or incorrect" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def refusal_message(address: str, source: TokenSource) -> str:
    where = source.path or f"${TOKEN}"
    return (
        f"the Ray cluster at {address} refused the token from {source.describe()}: it expects the token it was "
        f"started with; put that token in {where} (or set {TOKEN_PATH} to a file holding it)"
    )


def probe_without_token(address: str) -> str:
    """What a client with no token gets from the GCS at ``address``: "open", "refused" or
    "unreachable: ..." (a separate process, so that this one keeps its token)."""
    environment = {key: value for key, value in os.environ.items() if key not in (TOKEN, TOKEN_PATH)}
    environment[MODE] = "disabled"
    try:
        answer = subprocess.run(
            [sys.executable, "-c", _PROBE, address], env=environment, capture_output=True, text=True, timeout=PROBE_TIMEOUT
        ).stdout.strip()
    except subprocess.TimeoutExpired:
        return "unreachable: no answer"
    return answer.splitlines()[-1] if answer else "unreachable: the probe printed nothing"


def warn_if_open(address: str) -> None:
    """Say so when a joined cluster lets in clients without a token."""
    if probe_without_token(address) == "open":
        logger.warning(
            "the Ray cluster at %s accepts clients without a token: anyone who can reach it can run code on it. "
            "Restart it with %s=token (and the same token on every node)", address, MODE,
        )
