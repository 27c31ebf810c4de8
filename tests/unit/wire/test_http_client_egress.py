"""How the upstream client gets out: through a real HTTP proxy on loopback (CONNECT
tunnels for https, absolute-form requests for http, Basic credentials), chosen by a
provider's `proxy` or by HTTP(S)_PROXY / NO_PROXY; with a provider's private CA (trustme)
and client certificate (mTLS). The upstream's name, `upstream.test`, resolves only at the
proxy: a request that reached it without the proxy could not have."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from gateway.canonical import FailureKind, UpstreamFailure
from gateway.wire.http_client import UpstreamClient
from gateway.wire.proxy import EnvProxies, bypassed
from gateway.wire.tls import Egress
from tests.support.http_proxy import HttpProxy
from tests.support.raw_http import OK, Server, post, serve_forever

NAME = "upstream.test"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def proxy() -> AsyncIterator[HttpProxy]:
    p = await HttpProxy(hosts={NAME: "127.0.0.1"}).start()
    yield p
    await p.stop()


@pytest.fixture(autouse=True)
def no_env_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


async def upstream(ca: trustme.CA | None, *, client_ca: trustme.CA | None = None
                   ) -> tuple[Server, str]:
    """An upstream answering OK, https with a certificate for NAME when `ca` is given
    (and wanting a client certificate signed by `client_ca`)."""
    tls = None
    if ca is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(NAME).configure_cert(tls)
        if client_ca is not None:
            tls.verify_mode = ssl.CERT_REQUIRED
            client_ca.configure_trust(tls)
    server = Server(lambda r, w, n: serve_forever(server, r, w, OK))
    url = await server.start(tls)
    return server, url.replace("localhost", NAME)


async def answer(client: UpstreamClient, url: str) -> bytes:
    resp = await client.send(post(url))
    try:
        return await resp.read()
    finally:
        resp.release()


async def refused(client: UpstreamClient, url: str) -> UpstreamFailure:
    with pytest.raises(UpstreamFailure) as err:
        await answer(client, url)
    return err.value


async def test_https_through_a_providers_proxy_with_its_private_ca(
        ca: trustme.CA, ca_file: str, proxy: HttpProxy) -> None:
    server, url = await upstream(ca)
    egress = Egress(proxy=proxy.url, ca_file=ca_file)
    client = UpstreamClient(connect_timeout=2.0, egress=[(url, egress)])
    await client.start()
    for _ in range(2):
        assert await answer(client, url) == b'{"ok":true}'
    port = url.rsplit(":", 1)[1]
    assert proxy.seen == [f"CONNECT {NAME}:{port} HTTP/1.1"]  # one tunnel, kept alive
    assert server.connections == 1
    await client.close()
    untrusting = UpstreamClient(connect_timeout=2.0, egress=[(url, Egress(proxy=proxy.url))])
    await untrusting.start()  # the system's trust store: the private CA is not in it
    err = await refused(untrusting, url)
    assert err.kind is FailureKind.CONNECT and "through the proxy" in err.message
    await untrusting.close()
    await server.stop()


async def test_http_through_a_proxy_with_credentials(proxy: HttpProxy) -> None:
    proxy.auth = "Basic YWxpY2U6czNjcmV0"  # alice:s3cret
    server, url = await upstream(None)
    client = UpstreamClient(connect_timeout=2.0, egress=[
        (url, Egress(proxy=proxy.url.replace("//", "//alice:s3cret@")))])
    await client.start()
    assert await answer(client, url) == b'{"ok":true}'
    assert proxy.seen == [f"POST {url}/v1/chat HTTP/1.1"]  # absolute form
    assert proxy.authorizations == ["Basic YWxpY2U6czNjcmV0"]
    assert b"proxy-authorization" not in server.requests[0]  # the proxy's, not passed on
    await client.close()
    wrong = UpstreamClient(connect_timeout=2.0, egress=[
        (url, Egress(proxy=proxy.url.replace("//", "//alice:wrong@")))])
    await wrong.start()
    err = await refused(wrong, url)
    assert err.kind is FailureKind.CONNECT and "407" in err.message
    assert "wrong" not in str(err) and "alice" not in str(err)
    await wrong.close()
    await server.stop()


async def test_a_refused_tunnel_names_no_credentials(ca: trustme.CA, proxy: HttpProxy) -> None:
    proxy.auth = "Basic nobody-has-this"
    server, url = await upstream(ca)
    client = UpstreamClient(connect_timeout=2.0, egress=[
        (url, Egress(proxy=proxy.url.replace("//", "//alice:s3cret@")))])
    await client.start()
    err = await refused(client, url)
    assert err.kind is FailureKind.CONNECT and "refused the tunnel (407)" in err.message
    assert "s3cret" not in str(err) and "alice" not in str(err)
    await client.close()
    await server.stop()


async def test_environment_proxies_are_honoured(ca: trustme.CA, proxy: HttpProxy,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    server, url = await upstream(ca)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "internal.example,10.0.0.0/8")
    client = UpstreamClient(connect_timeout=2.0, ssl_context=trusting)
    await client.start()
    assert await answer(client, url) == b'{"ok":true}'
    assert len(proxy.seen) == 1 and proxy.seen[0].startswith(f"CONNECT {NAME}:")
    await client.close()
    # NO_PROXY names it, or the client does not trust the environment: direct, where
    # the name does not resolve.
    monkeypatch.setenv("NO_PROXY", f"internal.example,.{NAME.split('.')[1]}")
    for direct in (UpstreamClient(connect_timeout=2.0, ssl_context=trusting),
                   UpstreamClient(connect_timeout=2.0, ssl_context=trusting, trust_env=False)):
        await direct.start()
        err = await refused(direct, url)
        assert err.kind is FailureKind.CONNECT and "proxy" not in err.message
        await direct.close()
    assert len(proxy.seen) == 1
    await server.stop()


async def test_a_providers_direct_overrides_the_environment(
        proxy: HttpProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    server, url = await upstream(None)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    client = UpstreamClient(connect_timeout=2.0, egress=[(url, Egress(proxy="direct"))])
    await client.start()
    assert (await refused(client, url)).kind is FailureKind.CONNECT  # NAME: not resolvable
    assert await answer(client, url.replace(NAME, "127.0.0.1")) == b'{"ok":true}'
    assert proxy.seen == []  # loopback is never proxied from the environment either
    await client.close()
    await server.stop()


async def test_an_unusable_environment_proxy_fails_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:pw@proxy.example:1080")
    client = UpstreamClient(connect_timeout=2.0)
    await client.start()
    err = await refused(client, f"https://{NAME}:443")
    assert err.kind is FailureKind.CONNECT
    assert err.message == "HTTPS_PROXY: only http:// proxies are supported"
    await client.close()


async def test_a_client_certificate_for_mtls(ca: trustme.CA, ca_file: str,
                                             tmp_path: Path) -> None:
    client_ca = trustme.CA()
    issued = client_ca.issue_cert("gateway@turnout.test")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    server, url = await upstream(ca, client_ca=client_ca)
    direct = url.replace(NAME, "127.0.0.1")  # no proxy: the name is the certificate's
    with_cert = Egress(ca_file=ca_file, client_cert=str(cert), client_key=str(key))
    client = UpstreamClient(connect_timeout=2.0, egress=[(direct, with_cert)])
    await client.start()
    with pytest.raises(UpstreamFailure):  # 127.0.0.1 is not the name it was issued for
        await answer(client, direct)
    await client.close()
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    trusting.check_hostname = False  # 127.0.0.1 vs upstream.test: the cert is the point
    trusting.load_cert_chain(str(cert), str(key))
    client = UpstreamClient(connect_timeout=2.0, ssl_context=trusting)
    await client.start()
    assert await answer(client, direct) == b'{"ok":true}'
    await client.close()
    await server.stop()


async def test_mtls_through_a_proxy(ca: trustme.CA, ca_file: str, proxy: HttpProxy,
                                    tmp_path: Path) -> None:
    client_ca = trustme.CA()
    issued = client_ca.issue_cert("gateway@turnout.test")
    cert = tmp_path / "client.pem"  # certificate and key in one file
    cert.write_bytes(issued.cert_chain_pems[0].bytes() + issued.private_key_pem.bytes())
    server, url = await upstream(ca, client_ca=client_ca)
    client = UpstreamClient(connect_timeout=2.0, egress=[
        (url, Egress(proxy=proxy.url, ca_file=ca_file, client_cert=str(cert)))])
    await client.start()
    assert await answer(client, url) == b'{"ok":true}'
    await client.close()
    without = UpstreamClient(connect_timeout=2.0, egress=[
        (url, Egress(proxy=proxy.url, ca_file=ca_file))])
    await without.start()
    with pytest.raises(UpstreamFailure):  # the server wants a certificate
        await answer(without, url)
    await without.close()
    await server.stop()


def test_egress_applies_by_base_url_prefix() -> None:
    client = UpstreamClient(connect_timeout=1.0, egress=[
        ("https://h.example/v1", Egress(proxy="direct")),
        ("https://h.example/v1beta", Egress(proxy="http://p.example:3128"))])
    assert client._egress_for("https://h.example/v1/chat")[0] == Egress(proxy="direct")
    assert client._egress_for("https://h.example/v1beta/x?alt=sse")[0] == Egress(
        proxy="http://p.example:3128")
    assert client._egress_for("https://h.example/v10/x")[0] is None
    assert "p.example" not in repr(Egress(proxy="http://u:secret@p.example:3128"))


@pytest.mark.parametrize(("host", "port", "rules", "bypass"), [
    ("api.example.com", 443, "example.com", True),
    ("api.example.com", 443, ".example.com", True),
    ("api.example.com", 443, "*.example.com", True),
    ("example.com", 443, ".example.com", True),
    ("badexample.com", 443, "example.com", False),
    ("api.example.com", 443, "example.com:8443", False),
    ("api.example.com", 8443, "example.com:8443", True),
    ("10.1.2.3", 80, "10.0.0.0/8", True),
    ("10.1.2.3", 80, "10.1.2.3", True),
    ("11.1.2.3", 80, "10.0.0.0/8", False),
    ("2001:db8::1", 80, "2001:db8::/32", True),
    ("anything.example", 80, "*", True),
    ("localhost", 80, "", True),  # loopback: never through an environment proxy
    ("127.0.0.5", 80, "", True),
    ("::1", 80, "", True),
    ("API.Example.COM.", 443, "example.com", True),
])
def test_no_proxy_rules(host: str, port: int, rules: str, bypass: bool) -> None:
    parsed = tuple(r.strip().lower() for r in rules.split(",") if r.strip())
    assert bypassed(host, port, parsed) is bypass


def test_environment_proxies_by_scheme() -> None:
    env = EnvProxies({"https": "http://p.example:3128", "all": "p2.example:8080",
                      "no": "skip.example"})
    https = env.for_origin("https", "api.example.com", 443)
    assert https is not None and (https.host, https.port) == ("p.example", 3128)
    http = env.for_origin("http", "api.example.com", 80)  # ALL_PROXY, scheme-less: http
    assert http is not None and (http.host, http.port) == ("p2.example", 8080)
    assert env.for_origin("https", "skip.example", 443) is None
    assert EnvProxies({}).for_origin("https", "api.example.com", 443) is None
