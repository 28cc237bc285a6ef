"""What stands in front of every RPC of both services: the call count, fault injection (the one place where
the fake misbehaves on purpose), and authentication (token id and secret on the control plane, a JWT the
fake issued on the task command router)."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpclib.const
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.server import Stream

Handler = Callable[[Stream[Any, Any]], Awaitable[None]]

# the claims of the JWT an RPC of the task command router came with
ROUTER_CLAIMS: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("router_claims")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Tokens:
    """Credentials: the token id and secret the control plane accepts, and JWTs (HS256, signed with a key
    of this fake) for the SDK's auth token and for command router access."""

    def __init__(self, token_id: str, token_secret: str) -> None:
        self.token_id = token_id
        self.token_secret = token_secret
        self._key = hashlib.sha256(token_secret.encode() + b"/jwt").digest()

    def jwt(self, claims: Mapping[str, Any], lifetime: float = 3600) -> str:
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        payload = _b64(json.dumps({**claims, "exp": int(time.time() + lifetime)}).encode())
        signature = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(signature)}"

    def claims(self, token: str) -> dict[str, Any]:
        """The claims of a JWT this fake issued and that has not expired; UNAUTHENTICATED otherwise."""
        parts = token.split(".")
        if len(parts) == 3:
            expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
            if hmac.compare_digest(_b64(expected), parts[2]):
                claims: dict[str, Any] = json.loads(
                    base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
                )
                if claims.get("exp", 0) > time.time():
                    return claims
        raise GRPCError(Status.UNAUTHENTICATED, "invalid or expired token")

    def check_client(self, metadata: Mapping[str, Any]) -> None:
        if metadata.get("x-modal-token-id") != self.token_id or not hmac.compare_digest(
            str(metadata.get("x-modal-token-secret", "")), self.token_secret
        ):
            raise GRPCError(Status.UNAUTHENTICATED, "Token ID or secret is invalid")
        if (auth_token := metadata.get("x-modal-auth-token")) is not None:
            self.claims(str(auth_token))

    def check_router(self, metadata: Mapping[str, Any]) -> dict[str, Any]:
        bearer = str(metadata.get("authorization", ""))
        if not bearer.startswith("Bearer "):
            raise GRPCError(Status.UNAUTHENTICATED, "missing bearer token")
        return self.claims(bearer.removeprefix("Bearer "))


@dataclass
class Fault:
    pattern: re.Pattern[str]
    status: Status | None
    message: str | None
    delay: float | None
    remaining: int


class Faults:
    """Rules that match an RPC by a regex searched in its path (`/modal.client.ModalClient/SandboxCreateV2`,
    `/modal.task_command_router.TaskCommandRouter/TaskExecStart`) and apply to the next `times` matching
    calls, oldest rule first. Every call is recorded. Thread-safe: the test thread adds rules and reads
    counts while the server thread takes them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rules: list[Fault] = []
        self.paths: list[str] = []  # of every call, in order
        self.in_flight = 0  # calls a fault applies to, not yet answered

    def take(self, path: str) -> Fault | None:
        with self.lock:
            self.paths.append(path)
            rule = next((rule for rule in self.rules if rule.pattern.search(path)), None)
            if rule is not None:
                rule.remaining -= 1
                if not rule.remaining:
                    self.rules.remove(rule)
                self.in_flight += 1
            return rule


def guarded(
    path: str, handler: Handler | None, faults: Faults, check: Callable[[Mapping[str, Any]], object]
) -> Handler:
    """`handler` behind the count, the faults and `check` of the caller's metadata; no handler:
    UNIMPLEMENTED."""
    name = path.rsplit("/", 1)[-1]

    async def guard(stream: Stream[Any, Any]) -> None:
        fault = faults.take(path)
        try:
            if fault is not None and fault.delay:
                await asyncio.sleep(fault.delay)
            if fault is not None and fault.status is not None:
                raise GRPCError(fault.status, fault.message or f"fault injected by the fake: {name}")
            claims = check(stream.metadata or {})
            if handler is None:
                raise GRPCError(Status.UNIMPLEMENTED, f"{name} is not implemented by the fake")
            if isinstance(claims, dict):
                ROUTER_CLAIMS.set(claims)
            await handler(stream)
        finally:
            if fault is not None:
                with faults.lock:
                    faults.in_flight -= 1

    return guard


class Service:
    """A grpclib service (`base`, a generated `*Base` class) served by `implementation`'s methods of the
    same names, every RPC guarded; the RPCs it lacks answer UNIMPLEMENTED."""

    def __init__(
        self,
        base: type[Any],
        implementation: object,
        faults: Faults,
        check: Callable[[Mapping[str, Any]], object],
    ) -> None:
        template = type("Template", (base,), dict.fromkeys(base.__abstractmethods__))
        self._mapping: dict[str, grpclib.const.Handler] = {}
        for path, handler in template().__mapping__().items():
            implemented = getattr(implementation, path.rsplit("/", 1)[-1], None)
            self._mapping[path] = handler._replace(func=guarded(path, implemented, faults, check))

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return self._mapping
