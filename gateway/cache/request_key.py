"""The cache key: a hash of the normalized request.

Everything in the (canonical, OpenAI-shaped) body that can change the answer is part of
it: messages or prompt or input, tools, response format and every sampling parameter,
including fields the gateway has never heard of (a provider's new knob must not make two
different requests share an answer). Left out are only the fields known not to change the
output: who asks (`user`), how it is delivered (`stream`, `stream_options`) and request
bookkeeping (`metadata`, `store`, ...). The public model name stands for `model`.

Normalization: explicit nulls are dropped (they mean "the default", like absence), keys are
sorted at every depth, and float parameters are compared as floats (`temperature: 0` and
`0.0` are the same request). The namespace (a team, or `shared`) and the entry format
version are hashed in too, so two teams never share a key.
"""

from __future__ import annotations

import hashlib

import orjson

from gateway.canonical import CanonicalRequest
from gateway.store import layout

FORMAT = 1  # of the stored entries (gateway/cache/entry.py): a new one starts afresh

_IGNORED = frozenset({"model", "user", "stream", "stream_options", "metadata", "store",
                      "service_tier", "safety_identifier", "prompt_cache_key"})
_FLOATS = frozenset({"temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                     "repetition_penalty"})


def namespace(team: str, shared: bool) -> str:
    # Team names cannot hold ':' (policies.keys.NAME), so no team can pose as "shared".
    return "shared" if shared else f"team:{team}"


def normalized(req: CanonicalRequest) -> dict[str, object]:
    return {name: float(value) if name in _FLOATS and type(value) is int else value
            for name, value in req.body.items() if value is not None and name not in _IGNORED}


def entry_key(ns: str, req: CanonicalRequest) -> str:
    raw = orjson.dumps([FORMAT, ns, req.operation, req.model, normalized(req)],
                       option=orjson.OPT_SORT_KEYS)
    return layout.cache_entry(ns, hashlib.sha256(raw).hexdigest())
