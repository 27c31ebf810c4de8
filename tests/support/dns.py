"""A real DNS server on loopback (dnslib) whose A records tests can change."""

from __future__ import annotations

from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSHandler, DNSRecord, DNSServer

from tests.support.procs import free_port


class _Records(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.a: dict[str, list[str]] = {}

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".")
        if request.q.qtype == QTYPE.A:
            for ip in self.a.get(name, []):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=1))
        return reply


class LoopbackDNS:
    def __init__(self) -> None:
        self.records = _Records()
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._server = DNSServer(self.records, port=self.port, address="127.0.0.1")
        self._server.start_thread()

    def set(self, name: str, ips: list[str]) -> None:
        self.records.a[name] = list(ips)

    def stop(self) -> None:
        self._server.stop()
