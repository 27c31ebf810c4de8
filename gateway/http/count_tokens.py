"""POST /v1/messages/count_tokens: how many input tokens a Messages request would take,
in Anthropic's shape (`{"input_tokens": N}`), counted by whoever knows the model's
tokenizer, for the first of the model's deployments that can:

- an Anthropic deployment: Anthropic's own /v1/messages/count_tokens, sent the request as
  the client wrote it (`anthropic`);
- a vLLM pool replica: vLLM's /tokenize of the messages and tools through the model's own
  chat template (`vllm`);
- otherwise an estimate: ceil(characters / 4) + 4 per message, as admission estimates
  prompts (`estimate`; policies/pricing.py).

`x-turnout-token-count` says which counted, `x-turnout-deployment` where. An upstream
that fails (down, too slow, 5xx) is passed over for the next way; one that refuses the
request itself (4xx) answers for it. Counting is free: authenticated and checked against
the key's models, it is neither admitted against limits nor metered (as at Anthropic,
where it has rate limits of its own).
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from adapters import get_adapter
from adapters.anthropic_request import (
    MESSAGES_API,
    count_tokens_request,
    count_tokens_result,
)
from adapters.openai import tokenize_request, tokenize_result
from gateway.canonical import (
    CanonicalRequest,
    Deployment,
    ErrorClass,
    UpstreamFailure,
    UpstreamRequest,
)
from gateway.errors import GatewayError, from_upstream
from gateway.http import anthropic_schema
from gateway.http.anthropic_format import ANTHROPIC
from gateway.http.asgi import (
    Receive,
    Scope,
    Send,
    client_address,
    header,
    read_body,
    request_id,
    send_response,
)
from gateway.http.client_format import send_error
from gateway.services import Services
from policies.pricing import prompt_tokens


def _how(dep: Deployment) -> str | None:
    if MESSAGES_API in dep.capabilities.native_apis:
        return "anthropic"
    return "vllm" if dep.pool is not None else None


class CountTokensEndpoint:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(header(scope, b"x-request-id"))
        services = self.services
        try:
            principal = await services.authenticator.authenticate(
                header(scope, b"authorization"), header(scope, b"x-api-key"),
                client_address(scope))
            raw = await read_body(receive, services.config.server.max_body_bytes,
                                  header(scope, b"content-length"))
            req = anthropic_schema.canonical(raw, rid, counting=True)
            deps = services.registry.models.get(req.model)
            if not deps:
                raise GatewayError(404, f"The model `{req.model[:256]}` does not exist or you"
                                   " do not have access to it.", code="model_not_found",
                                   param="model")
            if not principal.may_use(req.model):
                raise GatewayError(403, f"Your key may not use the model `{req.model}`.",
                                   code="model_not_allowed", param="model")
            count, how, where = await self._count(req, deps)
        except GatewayError as err:
            await send_error(send, ANTHROPIC, err, rid)
            return
        headers = [(b"x-request-id", rid.encode()), (b"x-turnout-token-count", how.encode())]
        if where:
            headers.append((b"x-turnout-deployment", where.encode()))
        await send_response(send, 200, orjson.dumps({"input_tokens": count}), headers)

    async def _count(self, req: CanonicalRequest, deps: Sequence[Deployment]
                     ) -> tuple[int, str, str]:
        for dep in sorted((d for d in deps if _how(d)), key=lambda d: _how(d) != "anthropic"):
            how = _how(dep)
            ureq = (count_tokens_request(req, dep.target) if how == "anthropic"
                    else tokenize_request(req, dep.target))
            try:
                body = await self._send(ureq, dep)
                count = count_tokens_result(body) if how == "anthropic" else tokenize_result(body)
            except UpstreamFailure as failure:
                if failure.error_class is ErrorClass.FINAL and how == "anthropic":
                    raise from_upstream(failure, dep.id) from None  # the request is wrong
                continue  # down, slow, or (vLLM) unable to template it: the next way
            except (OSError, TimeoutError):
                continue
            return count, str(how), dep.id
        return prompt_tokens("chat", req.body), "estimate", ""

    async def _send(self, ureq: UpstreamRequest, dep: Deployment) -> bytes:
        client = self.services.client
        timeouts = self.services.config.server.timeouts
        deadline = client.loop.time() + min(timeouts.first_token_s, timeouts.total_s)
        resp = await client.send(ureq, deadline)
        try:
            body = await resp.read(deadline)
        finally:
            resp.release()
        if resp.status >= 300:
            raise get_adapter(dep.dialect).classify_error(resp.status, resp.headers, body)
        return body
