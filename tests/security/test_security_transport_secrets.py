"""Transport and secrets: `bkup serve` speaks TLS itself, the agent verifies it (and refuses plain http off loopback),
tokens and passwords stay out of the logs, and a master key file others can read stops the server."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from security_kit import free_port

from bkup.errors import BkupError


def make_ca_and_cert(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 and localhost it signed: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bkup test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(paths[2], 0o600)
    return paths


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BKUP_")}
    env.update(BKUP_DATA_DIR=str(tmp_path / "data"), BKUP_CONFIG_DIR=str(tmp_path / "config"),
               BKUP_STATE_DIR=str(tmp_path / "state"), PYTHONUNBUFFERED="1", **extra)
    return env


def bkup(env: dict[str, str], *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bkup", *args], env=env, input=input, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """One `bkup serve --log-json --log-level debug` over TLS with a user alice, her client, and its log file."""
    folder = tmp_path_factory.mktemp("tls")
    ca, cert, key = make_ca_and_cert(folder / "pki")
    master = base64.b64encode(os.urandom(32)).decode()
    env = base_env(folder, BKUP_MASTER_KEY=master, BKUP_TLS_CERT=str(cert), BKUP_TLS_KEY=str(key))
    password = "alice-Secret-Passw0rd-xyzzy"
    assert bkup(env, "user", "add", "alice", "--password-stdin", input=password + "\n").returncode == 0
    port = free_port()
    log = folder / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bkup", "serve", "--port", str(port), "--log-json", "--log-level", "debug"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/healthz", verify=ssl.create_default_context(cafile=str(ca)), timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    secrets = {"password": password, "master_key": master}
    yield {"url": url, "ca": ca, "env": env, "log": log, "folder": folder, "secrets": secrets, "port": port}
    proc.terminate()
    proc.wait(15)


def test_serve_speaks_tls_and_the_client_verifies_it(tls_server):
    from bkup.agent.api import ApiClient

    url, ca = tls_server["url"], tls_server["ca"]
    with ApiClient(url, ca_bundle=str(ca)) as api:
        answer = api.login("alice", tls_server["secrets"]["password"])
    tls_server["secrets"]["api_token"] = answer.token
    # Without the CA the certificate is not trusted: a clear message that names the setting.
    with ApiClient(url, retries=0) as api, pytest.raises(BkupError) as err:
        api.login("alice", "wrong")
    assert "certificate" in str(err.value).lower() and "ca_bundle" in str(err.value)
    # Plain http to the TLS port gets nowhere.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{tls_server['port']}/healthz", timeout=5).raise_for_status()


def test_the_agent_backs_up_over_tls_with_the_ca_bundle_and_refuses_without(tls_server):
    from bkup.agent.api import ApiClient

    env, url, folder = tls_server["env"], tls_server["url"], tls_server["folder"]
    with ApiClient(url, ca_bundle=str(tls_server["ca"])) as api:
        api.token = api.login("alice", tls_server["secrets"]["password"]).token
        tls_server["secrets"].setdefault("api_token", api.token)
        created = api.create_client("tls-pc")
    tls_server["secrets"]["agent_token"] = created.token
    src = folder / "src"
    src.mkdir()
    (src / "a.txt").write_text("over tls\n" * 1000)
    agent_env = {**env, "BKUP_STATE_DIR": str(folder / "agent-state")}
    agent_env.pop("BKUP_TLS_CERT")
    agent_env.pop("BKUP_TLS_KEY")
    args = ["agent", "--server", url, "--token", created.token, "--path", str(src), "--once", "--json"]
    refused = bkup(agent_env, *args)
    assert refused.returncode != 0
    assert "ca_bundle" in refused.stderr and "certificate" in refused.stderr.lower(), refused.stderr
    done = bkup({**agent_env, "BKUP_CA_BUNDLE": str(tls_server["ca"])}, *args)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["files_changed"] == 1


@pytest.mark.parametrize("server", ["http://backup.example.com:8200", "http://10.0.0.5", "http://[2001:db8::1]:8200"])
def test_plain_http_to_another_host_is_refused_unless_allowed(server):
    from bkup.agent.api import ApiClient

    with pytest.raises(BkupError) as err:
        ApiClient(server, "bkup_a_x")
    assert "allow_insecure_http" in str(err.value) and "BKUP_ALLOW_INSECURE_HTTP" in str(err.value)
    ApiClient(server, "bkup_a_x", allow_insecure_http=True).close()


@pytest.mark.parametrize("server", ["http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:8200", "http://127.1.2.3"])
def test_plain_http_to_loopback_is_fine(server):
    from bkup.agent.api import ApiClient

    ApiClient(server, "bkup_a_x").close()


def test_tls_settings_must_come_in_pairs(tmp_path):
    from bkup.cli.serve import tls_options
    from bkup.errors import ConfigError
    from bkup.settings import Settings

    assert tls_options(Settings()) == {}
    with pytest.raises(ConfigError, match="tls_key"):
        tls_options(Settings(tls_cert=str(tmp_path / "c.pem")))
    with pytest.raises(ConfigError, match="no such file"):
        tls_options(Settings(tls_cert=str(tmp_path / "c.pem"), tls_key=str(tmp_path / "k.pem")))


def test_no_token_or_password_reaches_the_server_log(tls_server):
    """Runs last in this module: the log then holds a login, a failed login, client creation, an agent run."""
    from bkup.agent.api import ApiClient

    with ApiClient(tls_server["url"], ca_bundle=str(tls_server["ca"]), retries=0) as api, pytest.raises(BkupError):
        api.login("alice", tls_server["secrets"]["password"] + "-wrong")
    time.sleep(0.5)
    text = tls_server["log"].read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len(lines) >= 5 and any(line.get("level") == "debug" for line in lines), text[:2000]
    secrets = tls_server["secrets"]
    assert {"password", "master_key", "api_token", "agent_token"} <= set(secrets), secrets.keys()
    for name, value in secrets.items():
        for piece in (value, value[-16:]):  # also no tail of one (a "masked" token that shows too much)
            assert piece not in text, f"the server log holds the {name}"


def test_a_master_key_file_others_can_read_stops_serve(tmp_path):
    env = base_env(tmp_path)
    (tmp_path / "config").mkdir()
    key = tmp_path / "config" / "master.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    for mode in (0o644, 0o640, 0o604):
        os.chmod(key, mode)
        proc = bkup(env, "serve", "--port", str(free_port()), timeout=60)
        assert proc.returncode == 1, (oct(mode), proc.stdout, proc.stderr)
        assert str(key) in proc.stderr and "chmod 600" in proc.stderr.replace("0600", "600"), proc.stderr
