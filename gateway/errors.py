"""Client-facing errors, independent of the surface that renders them.

Each surface (OpenAI, Anthropic, ...) turns a `GatewayError` into its own error
shape. Messages are written for the client: no stack traces, no credentials.
"""

from __future__ import annotations

from gateway.canonical import FailureKind, UpstreamFailure


class GatewayError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> GatewayError:
    return GatewayError(400, message, param=param, code=code)


# Upstream failure → (client status, code). 401/403/404 from an upstream mean *our*
# credentials or deployment config are wrong, which is not the client's fault: 502.
_UPSTREAM_STATUS: dict[FailureKind, tuple[int, str]] = {
    FailureKind.CONNECT: (502, "upstream_connect_error"),
    FailureKind.TIMEOUT: (504, "upstream_timeout"),
    FailureKind.RATE_LIMITED: (503, "upstream_rate_limited"),
    FailureKind.SERVER: (502, "upstream_server_error"),
    FailureKind.PROTOCOL: (502, "upstream_protocol_error"),
}


def from_upstream(failure: UpstreamFailure, deployment_id: str) -> GatewayError:
    """The error a client sees once no attempt is left."""
    if failure.kind in _UPSTREAM_STATUS:
        status, code = _UPSTREAM_STATUS[failure.kind]
        headers = {}
        if failure.retry_after is not None:
            headers["retry-after"] = str(max(1, round(failure.retry_after)))
        return GatewayError(
            status,
            f"upstream {deployment_id} failed: {failure.message}",
            type="server_error",
            code=code,
            headers=headers,
        )
    if failure.status in (401, 402, 403, 404, None):
        return GatewayError(
            502,
            f"upstream {deployment_id} refused the gateway's request ({failure.status}):"
            " check the deployment's credentials and model name",
            type="server_error",
            code="upstream_rejected",
        )
    # Any other 4xx is about the request itself: hand the upstream's reason to the client.
    return GatewayError(
        failure.status,
        failure.message,
        type="invalid_request_error",
        code=failure.kind.value if failure.kind is not FailureKind.REJECTED else None,
    )
