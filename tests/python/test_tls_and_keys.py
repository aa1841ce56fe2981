"""TLS on both public ports, and expired API keys, through real clients: the
official openai SDK (httpx with a CA bundle) and grpcio with SSL channel
credentials, against certificates openssl makes in the test."""

import hashlib
import pathlib
import ssl
import subprocess
import tempfile

import grpc
import openai
import pytest

from conftest import FAST_MESH, Running

KEY = "sk-routemesh-tls-acme"
EXPIRED = "sk-routemesh-tls-expired"


def openssl(cwd, *args):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def pki(d: pathlib.Path):
    """A CA and a server certificate for 127.0.0.1, in `d`."""
    openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=routemesh python test CA")
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "gw.key", "-out", "gw.csr", "-subj", "/CN=gateway")
    openssl(d, "x509", "-req", "-in", "gw.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "gw.pem", "-days", "2", "-extfile", "ext.cnf")


@pytest.fixture(scope="module")
def tls_mesh():
    certs = tempfile.TemporaryDirectory()
    d = pathlib.Path(certs.name)
    pki(d)
    keys = "".join(
        f"      - tenant: acme\n        sha256: {hashlib.sha256(k.encode()).hexdigest()}\n{extra}"
        for k, extra in [(KEY, ""), (EXPIRED, "        expires: 2020-01-01T00:00:00Z\n")]
    )
    config = FAST_MESH.replace(
        "  admin_listen: 127.0.0.1:0\n",
        f"  admin_listen: 127.0.0.1:0\n  tls: {{cert: {d / 'gw.pem'}, key: {d / 'gw.key'}}}\n  auth:\n    keys:\n{keys}",
    )
    running = Running(["up"], config)
    running.ca = d / "ca.pem"
    yield running
    running.stop()
    certs.cleanup()


def test_openai_sdk_over_https_with_a_ca_bundle(tls_mesh):
    base = "https://" + tls_mesh.ready["http"] + "/v1"
    # The SDK's own HTTP client, trusting the test CA.
    trusted = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=str(tls_mesh.ca)))
    client = openai.OpenAI(base_url=base, api_key=KEY, http_client=trusted, max_retries=0, timeout=20)
    resp = client.chat.completions.create(model="router", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert resp.choices[0].message.content
    stream = client.chat.completions.create(
        model="small-model", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    # Without the CA, the certificate is not trusted.
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=20).models.list()
    # Plain HTTP to the TLS port gets no answer.
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=base.replace("https://", "http://"), api_key=KEY, max_retries=0, timeout=5).models.list()

    # An expired key: 401, saying when it expired.
    expired = openai.OpenAI(base_url=base, api_key=EXPIRED, http_client=trusted, max_retries=0, timeout=20)
    with pytest.raises(openai.AuthenticationError) as err:
        expired.chat.completions.create(model="router", messages=[{"role": "user", "content": "hi"}])
    assert "expired at 2020-01-01T00:00:00Z" in err.value.message


def test_grpcio_over_tls(tls_mesh, stubs):
    creds = grpc.ssl_channel_credentials(root_certificates=tls_mesh.ca.read_bytes())
    with grpc.secure_channel(tls_mesh.gateway, creds) as channel:
        gw = stubs.gateway_grpc.GatewayStub(channel)
        req = stubs.gateway.GenerateRequest(messages=[stubs.common.ChatMessage(role="user", content="hi")])
        assert gw.Generate(req, metadata=[("authorization", f"Bearer {KEY}")], timeout=10).text
        with pytest.raises(grpc.RpcError) as err:
            gw.Generate(req, metadata=[("authorization", f"Bearer {EXPIRED}")], timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "expired at 2020-01-01T00:00:00Z" in err.value.details()
