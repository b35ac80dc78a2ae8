"""Bearer token and OAuth2 (token endpoint, refresh) against a tiny local HTTP server."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from CasePortalConnectorLib.store import StoreClient, StoreSettings, load_settings, resolve_secret
from VSPCoreLib.errors import EXIT_CREDENTIALS, CredentialsError


class _Server:
    """/token (password and refresh_token grants) and /dicom-web/studies needing a Bearer token."""

    def __init__(self):
        self.valid: set[str] = {"static-token"}
        self.grants: list[str] = []
        self.count = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status, body, kind="application/json"):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                grant = form["grant_type"][0]
                outer.grants.append(grant)
                ok = (grant == "password" and form["username"] == ["dr"] and form["password"] == ["pw"]) or (
                    grant == "refresh_token" and form["refresh_token"] == ["refresh-1"]
                )
                if not ok:
                    return self._answer(401, {"error": "invalid_grant"})
                outer.count += 1
                token = f"access-{outer.count}"
                outer.valid.add(token)
                self._answer(200, {"access_token": token, "expires_in": 3600, "refresh_token": "refresh-1"})

            def do_GET(self):
                token = self.headers.get("Authorization", "").removeprefix("Bearer ")
                if token not in outer.valid:
                    return self._answer(401, {"error": "unauthorized"})
                self._answer(200, [], "application/dicom+json")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.httpd.shutdown()


def test_bearer_token_from_a_private_file(server, tmp_path):
    token = tmp_path / "token"
    token.write_text("static-token\n")
    token.chmod(0o600)
    settings = load_settings(
        None, environ={"XDG_CONFIG_HOME": str(tmp_path)}, url=server.url, token_file=str(token)
    )
    assert settings.auth == "bearer"
    assert resolve_secret(settings) == "static-token"
    StoreClient(settings).check_connection()
    with pytest.raises(CredentialsError, match="HTTP 401") as caught:
        StoreClient(settings, secret="stolen-or-stale").check_connection()
    assert caught.value.exit_code == EXIT_CREDENTIALS and "stolen" not in str(caught.value)


def test_oauth2_password_grant_and_refresh_after_revocation(server):
    settings = StoreSettings(
        url=server.url, auth="oauth2", token_url=server.url + "/token", client_id="vsp", username="dr"
    )
    client = StoreClient(settings, secret="pw")
    client.check_connection()
    client.check_connection()
    assert server.grants == ["password"]  # the token is reused while valid
    server.valid.discard("access-1")  # the identity provider revokes it: the store answers 401
    client.check_connection()  # refreshed once, the call repeated
    assert server.grants == ["password", "refresh_token"]
    assert client.session.auth.token_requests == 2
    with pytest.raises(CredentialsError, match="token endpoint refused"):
        StoreClient(settings, secret="wrong").check_connection()
