"""Which account OS Login is asked about when the console runs on a Compute Engine VM.

Compute Engine's metadata server cannot exist here, so a stand-in answers on loopback, named
as such: it serves what the metadata server documents (cloud.google.com/compute/docs/metadata/
querying-metadata: every answer carries `Metadata-Flavor: Google`; `instance/service-accounts/
default/?recursive=true` names the account's email and scopes; `.../token` gives an access
token), and google-auth is pointed at it with its own GCE_METADATA_HOST and GCE_METADATA_IP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ACCOUNT = "123456789-compute@developer.gserviceaccount.com"


class StandInMetadataServer(BaseHTTPRequestHandler):
    """A stand-in for Compute Engine's metadata server: the few paths google-auth asks."""

    answers = {
        "/": "",
        "/computeMetadata/v1/project/project-id": "tpu-project",
        "/computeMetadata/v1/instance/service-accounts/default/?recursive=true": json.dumps(
            {
                "aliases": ["default"],
                "email": ACCOUNT,
                "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            }
        ),
        "/computeMetadata/v1/instance/service-accounts/default/token": json.dumps(
            {"access_token": "stand-in-token", "expires_in": 3599, "token_type": "Bearer"}
        ),
    }

    def do_GET(self) -> None:
        path = self.path.split("&")[0] if "recursive" in self.path else self.path.split("?")[0]
        body = self.answers.get(path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def metadata_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInMetadataServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _adc_account(tmp_path: Path, **env: str) -> str:
    """adc_account() in a fresh process (google-auth reads its variables on import)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "GCE_"))}
    clean.update(CLOUDSDK_CONFIG=str(tmp_path / "no-gcloud"), NO_PROXY="*", **env)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from console.adapters.os_login import adc_account as a; print(a())",
        ],
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_on_a_compute_engine_vm_the_metadata_servers_account_is_named(
    tmp_path: Path, metadata_server: str
) -> None:
    """Its credentials say "default" until refreshed: the account must be asked for."""
    got = _adc_account(tmp_path, GCE_METADATA_HOST=metadata_server, GCE_METADATA_IP=metadata_server)
    assert got == ACCOUNT


def test_with_no_credentials_anywhere_no_account_is_named(tmp_path: Path) -> None:
    # GCE_METADATA_IP at a closed loopback port: no metadata server answers.
    nowhere = "127.0.0.1:9"
    got = _adc_account(tmp_path, GCE_METADATA_HOST=nowhere, GCE_METADATA_IP=nowhere)
    assert got == ""
