"""TLS: ``tls_cert`` / ``tls_key`` make the node serve wss:// (and https:// on the metrics
port); a bad TLS file stops ``bluewren serve`` at start with exit 2 and one line naming
the file and the reason.

Certificates are made in the test: with the ``cryptography`` package when it is
installed, else with ``openssl req -x509``.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from bluewren.client import Client, ConnectionLost
from bluewren.node import Node, NodeConfig
from bluewren.node.lifecycle import EXIT_CONFIG
from conftest import bluewren_cli, node_env, reap, serve_process

SECRET = "t" * 48
TIMEOUT = 30.0


def make_cert(directory: Path, name: str = "node") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost and its key (PEM files)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor openssl is available")
        subprocess.run(
            [
                openssl,
                *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
                *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"),
                *("-subj", "/CN=localhost"),
                *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            ],
            check=True,
            capture_output=True,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that trusts exactly ``cert`` (and checks the host name)."""
    context = ssl.create_default_context(cafile=str(cert))
    return context


def test_client_exchanges_messages_over_wss_and_metrics_answers_over_https(
    tmp_path: Path,
) -> None:
    cert, key = make_cert(tmp_path)

    async def main() -> None:
        config = NodeConfig(
            port=0,
            metrics_port=0,
            data_dir=tmp_path / "data",
            token_secret=SECRET,
            tls_cert=cert,
            tls_key=key,
        )
        async with Node(config) as node:
            assert node.url.startswith("wss://127.0.0.1:")
            ctx = trusting(cert)
            alice = Client(node.url, node.issuer.mint("alice", "d1"), ssl=ctx)
            bob = Client(node.url, node.issuer.mint("bob", "d1"), ssl=ctx)
            await alice.connect()
            await bob.connect()
            chat = await alice.create_direct("bob")
            ack = await alice.send(chat.conv, "over tls")
            while True:
                event = await bob.next_event(10)
                if event.kind == "deliver":
                    break
            assert (event.conv, event.seq, event.sender, event.body) == (
                chat.conv,
                ack.seq,
                "alice",
                b"over tls",
            )
            await alice.close()
            await bob.close()
            # A client that does not trust the certificate is refused by its own check.
            stranger = Client(node.url, node.issuer.mint("carol", "d1"), reconnect=False)
            with pytest.raises(ssl.SSLCertVerificationError):
                await stranger.connect()
            # Plain ws:// to the TLS port does not get a session.
            plain = Client(
                f"ws://127.0.0.1:{node.port}/", node.issuer.mint("carol", "d1"), timeout=5
            )
            with pytest.raises((ConnectionLost, ConnectionError, OSError, TimeoutError)):
                await plain.connect()
            # The metrics port speaks HTTPS with the same certificate.
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", node.metrics_port, ssl=ctx, server_hostname="localhost"
            )
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert raw.startswith(b"HTTP/1.1 200"), raw[:80]

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


def test_client_refuses_ssl_with_a_ws_url() -> None:
    with pytest.raises(ValueError, match="wss://"):
        Client("ws://127.0.0.1:1/", "token", ssl=ssl.create_default_context())


def _env() -> dict[str, str]:
    return node_env(BLUEWREN_TOKEN_SECRET=SECRET)


def _serve(tmp_path: Path, cert: Path, key: Path) -> subprocess.Popen[str]:
    return serve_process(
        *("--port", "0", "--data-dir", str(tmp_path / "data"), "--shutdown-timeout", "3"),
        *("--set", f"tls_cert={cert}", "--set", f"tls_key={key}"),
        env=_env(),
    )


def test_serve_process_listens_on_wss(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    proc = _serve(tmp_path, cert, key)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"bluewren node listening on (wss://127\.0\.0\.1:\d+/)\n", line)
        assert match, line

        async def exchange() -> None:
            from bluewren.auth import TokenIssuer

            issuer = TokenIssuer(SECRET)
            ctx = trusting(cert)
            async with Client(match.group(1), issuer.mint("alice", "d1"), ssl=ctx) as alice:
                chat = await alice.create_direct("bob")
                ack = await alice.send(chat.conv, "hello over wss")
                assert ack.seq == 1
            async with Client(match.group(1), issuer.mint("bob", "d1"), ssl=ctx) as bob:
                page = await bob.history(chat.conv)
                assert [m.body for m in page.messages] == [b"hello over wss"]

        asyncio.run(asyncio.wait_for(exchange(), TIMEOUT))
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        reap(proc)


def _bad_case(tmp_path: Path, case: str) -> tuple[Path, Path, str, str]:
    """(cert, key, the file named, a piece of the reason) of one bad TLS setup."""
    cert, key = make_cert(tmp_path)
    if case == "missing cert":
        gone = tmp_path / "gone.crt"
        return gone, key, f"tls_cert {gone}", "no such file"
    if case == "missing key":
        gone = tmp_path / "gone.key"
        return cert, gone, f"tls_key {gone}", "no such file"
    if case == "unreadable cert":  # a directory: unreadable even for root
        folder = tmp_path / "dir.crt"
        folder.mkdir()
        return folder, key, f"tls_cert {folder}", "not readable"
    if case == "cert not PEM":
        junk = tmp_path / "junk.crt"
        junk.write_text("this is not a certificate\n")
        return junk, key, f"tls_cert {junk}", "not a PEM certificate"
    if case == "cert is the key":
        return key, key, f"tls_cert {key}", "not a PEM certificate"
    if case == "cert PEM but corrupt":
        broken = tmp_path / "broken.crt"
        broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        return broken, key, f"tls_cert {broken}", "not a valid PEM certificate"
    if case == "key not PEM":
        return cert, cert, f"tls_key {cert}", "not a PEM private key"
    if case == "key encrypted":
        locked = tmp_path / "locked.key"
        _encrypt_key(key, locked)
        return cert, locked, f"tls_key {locked}", "the key is encrypted"
    if case == "key of another cert":
        _, other = make_cert(tmp_path, "other")
        return cert, other, f"tls_key {other}", "does not match the certificate"
    raise AssertionError(case)


def _encrypt_key(key: Path, out: Path) -> None:
    """``key`` encrypted with a passphrase, written to ``out`` (PEM)."""
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor openssl is available")
        command = [openssl, "pkey", "-in", str(key), "-out", str(out), "-aes256"]
        subprocess.run(
            [*command, "-passout", "pass:passphrase"],
            check=True,
            capture_output=True,
        )
        return
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    out.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )


BAD_CASES = [
    "missing cert",
    "missing key",
    "unreadable cert",
    "cert not PEM",
    "cert is the key",
    "cert PEM but corrupt",
    "key not PEM",
    "key encrypted",
    "key of another cert",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_serve_with_a_bad_tls_file_exits_2_naming_the_file_and_reason(
    tmp_path: Path, case: str
) -> None:
    cert, key, names, reason = _bad_case(tmp_path, case)
    proc = _serve(tmp_path, cert, key)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        reap(proc)
    assert proc.returncode == EXIT_CONFIG == 2, (out, err)
    assert "listening" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"bluewren: {names}: "), lines[0]
    assert reason in lines[0], lines[0]
    assert not (tmp_path / "data" / "bluewren.db").exists()  # failed before the store


def test_check_config_checks_the_tls_files_too(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    _, other = make_cert(tmp_path, "other")
    good = tmp_path / "good.toml"
    good.write_text(f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text(f'tls_cert = "{cert}"\ntls_key = "{other}"\n')
    env = _env()
    ok = bluewren_cli("check-config", str(good), env=env)
    assert (ok.returncode, ok.stdout) == (0, "ok\n"), ok.stderr
    refused = bluewren_cli("check-config", str(bad), env=env)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"bluewren: tls_key {other}: the key does not match the certificate in {cert}"
    )


def test_a_tls_handshake_that_never_comes_is_cut_after_hello_timeout(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)

    async def main() -> None:
        config = NodeConfig(
            port=0,
            data_dir=tmp_path / "data",
            token_secret=SECRET,
            tls_cert=cert,
            tls_key=key,
            hello_timeout=0.5,
        )
        async with Node(config) as node:
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, said nothing
            elapsed = loop.time() - started
            assert 0.3 < elapsed < 5, elapsed
            writer.close()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
