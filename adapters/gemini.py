"""Google Gemini API upstreams (base e.g. https://generativelanguage.googleapis.com/v1beta).

Chat goes to `models/{model}:generateContent` (streams: `:streamGenerateContent?alt=sse`,
where every `data:` is a whole GenerateContentResponse and there is no [DONE]: the stream
counts as finished once every candidate reported a finishReason). Embeddings go to
`:batchEmbedContents`. Legacy completions are rejected.

Gemini 3 requires the `thoughtSignature` of a function call back in the next turn: it rides
along on the OpenAI tool call as `extra_content.google.thought_signature`, the convention of
Google's own OpenAI-compatible endpoint, and clients that echo tool calls back return it.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from adapters.common import (
    ChunkWriter,
    append_turn,
    arguments_object,
    choice,
    completion_body,
    context_or_rejected,
    forced_tool_name,
    function_tools,
    image_url,
    json_schema_format,
    load_object,
    max_output_tokens,
    new_id,
    parse_data_url,
    rejected,
    retryable_kind,
    stop_list,
    text_of,
    tool_call,
)
from adapters.openai import retry_after_seconds
from gateway.canonical import (
    CanonicalRequest,
    Capabilities,
    FailureKind,
    Operation,
    StreamChunk,
    Target,
    UpstreamFailure,
    UpstreamRequest,
    UpstreamResponse,
    Usage,
)

_MAX_MESSAGE = 500
_CONTEXT_HINTS = ("exceeds the maximum number of tokens", "input token count", "context window")
# Documented for histories whose function calls did not come from Gemini
# (ai.google.dev/gemini-api/docs/thought-signatures).
SKIP_SIGNATURE = "skip_thought_signature_validator"

FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        ("SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
         "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR"),
        "content_filter",
    ),
}  # OTHER, MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, ...: "stop" (no closer OpenAI value)

_STATUS_KINDS: dict[str, FailureKind] = {
    "RESOURCE_EXHAUSTED": FailureKind.RATE_LIMITED,
    "UNAVAILABLE": FailureKind.SERVER,
    "INTERNAL": FailureKind.SERVER,
    "DEADLINE_EXCEEDED": FailureKind.TIMEOUT,
}


# -- request -----------------------------------------------------------------------------------


def _model_path(target: Target) -> str:
    return f"{target.base_url}/models/{target.upstream_model.removeprefix('models/')}"


def _media_part(part: dict[str, Any], where: str) -> dict[str, Any]:
    url = image_url(part, where)
    data = parse_data_url(url)
    if data is not None:
        return {"inlineData": {"mimeType": data[0], "data": data[1]}}
    if url.startswith(("https://", "http://", "gs://")):
        # Gemini fetches file URIs itself; it needs a MIME type, which URLs do not carry.
        return {"fileData": {"mimeType": _guess_image_type(url), "fileUri": url}}
    raise rejected(f"{where}.image_url.url must be an http(s) or base64 data: URL")


def _guess_image_type(url: str) -> str:
    suffix = url.split("?", 1)[0].rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "webp": "image/webp", "gif": "image/gif",
            "heic": "image/heic", "heif": "image/heif"}.get(suffix, "image/jpeg")


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content or []):
        kind = part.get("type") if isinstance(part, dict) else None
        at = f"{where}.content[{i}]"
        if kind == "text":
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif kind == "image_url":
            parts.append(_media_part(part, at))
        elif kind == "input_audio":
            audio = part.get("input_audio") or {}
            mime = f"audio/{audio.get('format') or 'wav'}"
            parts.append({"inlineData": {"mimeType": mime, "data": audio.get("data") or ""}})
        else:
            raise rejected(f"{at}: content parts of type {kind!r} are not supported by Gemini")
    return parts


def _signature(call: dict[str, Any]) -> str | None:
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    sig = google.get("thought_signature") if isinstance(google, dict) else None
    return sig if isinstance(sig, str) else None


def _model_parts(msg: dict[str, Any], where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    texts = text_of(msg.get("content"), where) if msg.get("content") else []
    parts: list[dict[str, Any]] = [{"text": t} for t in texts]
    for i, call in enumerate(msg.get("tool_calls") or []):
        fn = call.get("function") or {}
        name = str(fn.get("name"))
        names[str(call.get("id"))] = name  # tool results name the function, not the call id
        part: dict[str, Any] = {"functionCall": {
            "name": name, "args": arguments_object(fn.get("arguments"), f"{where}.tool_calls[{i}]"),
        }}
        # Gemini validates the signature of a turn's first function call only.
        sig = _signature(call) or (SKIP_SIGNATURE if i == 0 else None)
        if sig:
            part["thoughtSignature"] = sig
        parts.append(part)
    return parts


def _function_response(msg: dict[str, Any], where: str, names: dict[str, str]) -> dict[str, Any]:
    name = names.get(str(msg.get("tool_call_id")))
    if name is None:
        raise rejected(f"{where}.tool_call_id does not match a tool call of an earlier message")
    text = "".join(text_of(msg.get("content"), where))
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = text
    # `response` must be an object; "output" is the key Gemini documents for a plain result.
    response = value if isinstance(value, dict) else {"output": value}
    return {"functionResponse": {"name": name, "response": response}}


def _contents(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """(system instruction parts, contents); consecutive same-role turns are merged."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    for i, msg in enumerate(messages):
        role, where = msg.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend({"text": t} for t in text_of(msg.get("content"), where))
        elif role == "user":
            append_turn(turns, "user", "parts", _user_parts(msg.get("content"), where))
        elif role == "assistant":
            append_turn(turns, "model", "parts", _model_parts(msg, where, names))
        elif role == "tool":
            append_turn(turns, "user", "parts", [_function_response(msg, where, names)])
        else:
            raise rejected(f"{where}: role {role!r} is not supported by Gemini")
    return system, turns


_GENERATION_FIELDS = {
    "temperature": "temperature", "top_p": "topP", "top_k": "topK", "seed": "seed",
    "n": "candidateCount", "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}


def _generation_config(src: dict[str, Any]) -> dict[str, Any]:
    config = {ours: src[theirs] for theirs, ours in _GENERATION_FIELDS.items()
              if src.get(theirs) is not None}
    limit = max_output_tokens(src)
    if limit is not None:
        config["maxOutputTokens"] = limit
    stops = stop_list(src.get("stop"))
    if stops:
        config["stopSequences"] = stops
    fmt = src.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = json_schema_format(src)
        if schema is not None:
            config["responseJsonSchema"] = schema
    return config


def _tool_config(src: dict[str, Any]) -> dict[str, Any] | None:
    choice_ = src.get("tool_choice")
    forced = forced_tool_name(choice_)
    if forced is not None:
        calling: dict[str, Any] = {"mode": "ANY", "allowedFunctionNames": [forced]}
    elif choice_ in ("auto", "none", "required"):
        calling = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice_]}
    else:
        return None
    return {"functionCallingConfig": calling}


def generate_body(src: dict[str, Any]) -> dict[str, Any]:
    system, contents = _contents(src.get("messages") or [])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config = _generation_config(src)
    if config:
        out["generationConfig"] = config
    if src.get("tools"):
        # parametersJsonSchema takes the full JSON Schema that OpenAI tools carry (the older
        # `parameters` field only takes an OpenAPI subset and rejects the rest).
        decls = [{"name": fn["name"], "description": fn.get("description") or "",
                  **({"parametersJsonSchema": fn["parameters"]} if fn.get("parameters") else {})}
                 for fn in function_tools(src["tools"])]
        out["tools"] = [{"functionDeclarations": decls}]
    tool_config = _tool_config(src)
    if tool_config is not None:
        out["toolConfig"] = tool_config
    return out


def _embed_body(src: dict[str, Any], target: Target) -> dict[str, Any]:
    texts = src.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise rejected("Gemini embeddings take text input only, not token ids")
    model = f"models/{target.upstream_model.removeprefix('models/')}"
    requests = []
    for text in texts:
        one: dict[str, Any] = {"model": model, "content": {"parts": [{"text": text}]}}
        if src.get("dimensions"):
            one["outputDimensionality"] = src["dimensions"]
        requests.append(one)
    return {"requests": requests}


# -- response ----------------------------------------------------------------------------------


def _usage(meta: Any) -> tuple[Usage, int] | None:
    """usageMetadata → (usage, reasoning tokens). Thoughts are billed as output, and
    promptTokenCount already includes cached tokens, as OpenAI's prompt_tokens does."""
    if not isinstance(meta, dict):
        return None
    thoughts = int(meta.get("thoughtsTokenCount") or 0)
    prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
    completion = int(meta.get("candidatesTokenCount") or 0) + thoughts
    return Usage(prompt, completion, int(meta.get("cachedContentTokenCount") or 0)), thoughts


def _finish(reason: Any, called_tools: bool) -> str:
    if called_tools and reason in ("STOP", None):
        return "tool_calls"  # Gemini ends function-call turns with STOP
    return FINISH_REASONS.get(str(reason), "stop")


def _call(part: dict[str, Any], index: int | None) -> dict[str, Any]:
    fn = part["functionCall"]
    sig = part.get("thoughtSignature")
    extra = {"extra_content": {"google": {"thought_signature": sig}}} if sig else None
    return tool_call(str(fn.get("id") or new_id("call_")), str(fn.get("name")),
                     orjson.dumps(fn.get("args") or {}).decode(), index, extra)


def _split(parts: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """(answer texts, function-call parts); thought summaries are not part of the answer."""
    texts, calls = [], []
    for part in parts or []:
        if not isinstance(part, dict) or part.get("thought"):
            continue
        if "functionCall" in part:
            calls.append(part)
        elif part.get("text"):
            texts.append(str(part["text"]))
    return texts, calls


def _blocked(obj: dict[str, Any]) -> None:
    reason = (obj.get("promptFeedback") or {}).get("blockReason")
    if reason and not obj.get("candidates"):
        raise UpstreamFailure(FailureKind.CONTENT_POLICY, f"Gemini blocked the prompt ({reason})",
                              status=400)


def failure_from_error(error: Any, status: int | None,
                       headers: Mapping[str, str]) -> UpstreamFailure:
    """A Google API error object `{code, message, status, details}` → a classified failure."""
    err = error if isinstance(error, dict) else {}
    message = str(err.get("message") or "no error message")[:_MAX_MESSAGE]
    code = status or (err["code"] if isinstance(err.get("code"), int) else 500)
    kind = (retryable_kind(code, headers) or _STATUS_KINDS.get(str(err.get("status")))
            or context_or_rejected(message, _CONTEXT_HINTS))
    retry_after = retry_after_seconds(headers)
    if retry_after is None:
        retry_after = _retry_delay(err.get("details"))
    return UpstreamFailure(kind, message, status=code, retry_after=retry_after)


def _retry_delay(details: Any) -> float | None:
    """google.rpc.RetryInfo's retryDelay, a protobuf Duration in JSON ("37s", "1.5s")."""
    for detail in details if isinstance(details, list) else []:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


def _error_object(body: bytes) -> Any:
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return {"message": text[:_MAX_MESSAGE] or "no error body"}
    if isinstance(obj, list) and obj:  # streaming endpoints wrap errors in an array
        obj = obj[0]
    return obj.get("error", obj) if isinstance(obj, dict) else {"message": str(obj)}


def _chat_completion(req: CanonicalRequest, obj: dict[str, Any]) -> UpstreamResponse:
    _blocked(obj)
    choices = []
    for i, cand in enumerate(obj.get("candidates") or []):
        texts, calls = _split((cand.get("content") or {}).get("parts"))
        choices.append(choice(int(cand.get("index", i)), "".join(texts) if texts else None,
                              [_call(p, None) for p in calls],
                              _finish(cand.get("finishReason"), bool(calls))))
    usage = _usage(obj.get("usageMetadata"))
    body = completion_body(str(obj.get("responseId") or new_id("chatcmpl-")),
                           str(obj.get("modelVersion") or req.model), choices,
                           usage[0] if usage else None, usage[1] if usage else 0)
    return UpstreamResponse(body, usage[0] if usage else None)


def _embedding(values: list[float], base64_floats: bool) -> list[float] | str:
    if not base64_floats:
        return values
    # What OpenAI's `encoding_format: base64` means: little-endian float32, base64-encoded.
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def _embeddings(req: CanonicalRequest, obj: dict[str, Any]) -> UpstreamResponse:
    as_base64 = req.body.get("encoding_format") == "base64"
    data = [{"object": "embedding", "index": i,
             "embedding": _embedding(list(e.get("values") or []), as_base64)}
            for i, e in enumerate(obj.get("embeddings") or [])]
    usage = _usage(obj.get("usageMetadata"))
    prompt = usage[0].prompt_tokens if usage else 0
    body = {"object": "list", "data": data, "model": req.model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}
    return UpstreamResponse(orjson.dumps(body), usage[0] if usage else None)


@dataclass(slots=True)
class _Candidate:
    tools: int = 0  # tool calls streamed so far (their OpenAI indexes)
    done: bool = False


@dataclass(slots=True)
class GeminiStream:
    """Gemini stream responses → OpenAI chunks. Finished once every candidate the request
    asked for has a finishReason; dispatch then stops reading, so whatever follows (EOF)
    does not matter."""

    model: str
    expected: int
    keep_usage: bool
    finished: bool = False
    _writer: ChunkWriter | None = None
    _candidates: dict[int, _Candidate] = field(default_factory=dict)
    _usage: tuple[Usage, int] | None = None

    def feed(self, event: bytes | None, data: bytes) -> list[StreamChunk]:
        obj = load_object(data)
        if "error" in obj:  # an error can arrive as a stream event after the 200
            raise failure_from_error(obj["error"], None, {})
        _blocked(obj)
        if self._writer is None:
            self._writer = ChunkWriter(str(obj.get("responseId") or new_id("chatcmpl-")),
                                       str(obj.get("modelVersion") or self.model), self.keep_usage)
        self._usage = _usage(obj.get("usageMetadata")) or self._usage
        out: list[StreamChunk] = []
        for i, cand in enumerate(obj.get("candidates") or []):
            out += self._candidate(self._writer, int(cand.get("index", i)), cand)
        if sum(c.done for c in self._candidates.values()) >= self.expected:
            self.finished = True
            usage, reasoning = self._usage or (Usage(), 0)
            out.append(self._writer.usage(usage, reasoning))
        return out

    def _candidate(self, out: ChunkWriter, index: int, cand: dict[str, Any]) -> list[StreamChunk]:
        state = self._candidates.setdefault(index, _Candidate())
        texts, calls = _split((cand.get("content") or {}).get("parts"))
        chunks = []
        if texts:
            chunks += out.delta({"content": "".join(texts)}, index)
        if calls:
            deltas = [_call(p, state.tools + k) for k, p in enumerate(calls)]
            state.tools += len(calls)
            chunks += out.delta({"tool_calls": deltas}, index)
        reason = cand.get("finishReason")
        if reason and not state.done:
            state.done = True
            chunks += out.delta({}, index, _finish(reason, state.tools > 0))
        return chunks


class GeminiAdapter:
    operations: frozenset[Operation] = frozenset({"chat", "embeddings"})
    _capabilities = Capabilities(genai_provider="gcp.gemini")

    def capabilities(self, target: Target) -> Capabilities:
        return self._capabilities

    def build_request(self, req: CanonicalRequest, target: Target) -> UpstreamRequest:
        headers = {"content-type": "application/json", **target.headers}
        if target.api_key:
            headers["x-goog-api-key"] = target.api_key
        if req.operation == "embeddings":
            url = _model_path(target) + ":batchEmbedContents"
            body = _embed_body(req.body, target)
        elif req.operation == "chat":
            body = generate_body(req.body)
            if req.stream:
                url = _model_path(target) + ":streamGenerateContent?alt=sse"
                headers["accept"] = "text/event-stream"
            else:
                url = _model_path(target) + ":generateContent"
        else:
            raise rejected(f"Gemini has no {req.operation} API; model {req.model!r} needs an"
                           " OpenAI-compatible deployment for it")
        return UpstreamRequest("POST", url, headers, orjson.dumps(body))

    def parse_response(self, req: CanonicalRequest, body: bytes) -> UpstreamResponse:
        obj = load_object(body)
        if req.operation == "embeddings":
            return _embeddings(req, obj)
        return _chat_completion(req, obj)

    def stream_translator(self, req: CanonicalRequest) -> GeminiStream:
        n = req.body.get("n")
        expected = n if isinstance(n, int) and n > 1 else 1
        return GeminiStream(req.model, expected, req.include_usage)

    def classify_error(
        self, status: int, headers: Mapping[str, str], body: bytes
    ) -> UpstreamFailure:
        return failure_from_error(_error_object(body), status, headers)
