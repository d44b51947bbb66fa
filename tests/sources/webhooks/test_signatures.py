"""Authentication of webhook deliveries: documented test vectors, then over HTTP."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_settings
from bridge.queue import DurableQueue
from bridge.sources.base import SourceConfigError, SourceContext
from bridge.sources.signatures import HmacScheme, TokenScheme, hmac_hex
from bridge.sources.webhooks.github import SIGNATURE, create
from tests.support.webhooks import SECRET, StartBridge, fixture_bytes, github_signature

GITHUB_VECTOR = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
CIRCLECI = HmacScheme(header="circleci-signature", part="v1")


def test_github_documented_vector() -> None:
    assert hmac_hex(SECRET.encode(), b"Hello, World!") == GITHUB_VECTOR
    headers = {"X-Hub-Signature-256": f"sha256={GITHUB_VECTOR}"}
    assert SIGNATURE.verify(headers, b"Hello, World!", [SECRET.encode()]) is None
    assert SIGNATURE.verify(headers, b"Hello, World?", [SECRET.encode()]) == "X-Hub-Signature-256 does not match"


@pytest.mark.parametrize(("body", "secret", "signature"), [
    (b"hello world", "secret", "734cc62f32841568f45715aeb9f4d7891324e6d948e4c6c60c0621cdac48623a"),
    (b"lalala", "another-secret", "daa220016c8f29a8b214fbfc3671aeec2145cfb1e6790184ffb38b6d0425fa00"),
    (b"an-important-request-payload", "hunter123",
     "9be2242094a9a8c00c64306f382a7f9d691de910b4a266f67bd314ef18ac49fa"),
    (b"foo", "secret", "773ba44693c7553d6ee20f61ea5d2757a9a4f4a44d2841ae4e95b52e4cd62db4"),
])
def test_circleci_documented_vectors(body: bytes, secret: str, signature: str) -> None:
    assert CIRCLECI.verify({"circleci-signature": f"v1={signature}"}, body, [secret.encode()]) is None
    # CircleCI may send more than one signature while it rotates; one matching v1 is enough,
    # and a v2 the bridge does not check is skipped.
    rotated = {"circleci-signature": f"v1={'0' * 64},v1={signature},v2=whatever"}
    assert CIRCLECI.verify(rotated, body, [secret.encode()]) is None
    assert CIRCLECI.verify({"circleci-signature": f"v2={signature}"}, body, [secret.encode()]) == (
        "circleci-signature has no v1 signature")


@pytest.mark.parametrize(("header", "value", "verdict"), [
    ("Authorization", f"Bearer {SECRET}", None),
    ("Authorization", "Basic " + base64.b64encode(f"any-user:{SECRET}".encode()).decode(), None),
    ("Authorization", "Basic " + base64.b64encode(b"any-user:nope").decode(), "Authorization does not match"),
    ("Authorization", "Basic not-base64!", "Authorization does not match"),
    ("Authorization", f"Token {SECRET}", "Authorization must be Bearer or Basic"),
    ("X-Gitlab-Token", SECRET, None),
    ("X-Gitlab-Token", SECRET + " ", None),
    ("X-Gitlab-Token", SECRET[:-1], "X-Gitlab-Token does not match"),
])
def test_token_schemes(header: str, value: str, verdict: str | None) -> None:
    assert TokenScheme(header=header).verify({header: value}, b"{}", [b"old", SECRET.encode()]) == verdict


GITHUB: dict[str, Any] = {"name": "github", "type": "github", "secrets": [SECRET]}
BODY_FIXTURE = "github/deployment_status.success.json"


def headers_for(body: bytes, signature: str | None) -> dict[str, str]:
    headers = {"X-GitHub-Event": "deployment_status", "X-GitHub-Delivery": "d-1"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return headers


async def test_documented_vector_passes_authentication_over_http(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    body = b"Hello, World!"
    status, answer = await running.post("github", body, headers_for(body, f"sha256={GITHUB_VECTOR}"))
    # Authenticated, then refused as what it is: not JSON.
    assert status == 400 and answer["error"].startswith("body is not valid JSON")


@pytest.mark.parametrize(("signature", "error"), [
    (None, "authentication failed: missing X-Hub-Signature-256 header"),
    ("sha256=" + "0" * 64, "authentication failed: X-Hub-Signature-256 does not match"),
    # A malformed signature is refused from the headers alone, before the body is read.
    (f"sha1={GITHUB_VECTOR}",
     "authentication failed: X-Hub-Signature-256 is not a sha256=<sha256 hex digest> signature"),
    ("sha256=" + "0" * 63, "authentication failed: X-Hub-Signature-256 is not a sha256=<sha256 hex digest> signature"),
    ("", "authentication failed: missing X-Hub-Signature-256 header"),
])
async def test_missing_or_invalid_signature_is_refused(start_bridge: StartBridge, signature: str | None,
                                                       error: str) -> None:
    running = await start_bridge(GITHUB)
    body = fixture_bytes(BODY_FIXTURE)
    assert await running.post("github", body, headers_for(body, signature)) == (401, {"error": error})
    assert await running.queued_ids() == set()


async def test_body_altered_by_one_byte_is_refused(start_bridge: StartBridge) -> None:
    running = await start_bridge(GITHUB)
    body = fixture_bytes(BODY_FIXTURE)
    signature = github_signature(body)
    altered = body.replace(b'"production"', b'"productioN"', 1)
    assert len(altered) == len(body) and altered != body
    assert (await running.post("github", altered, headers_for(altered, signature)))[0] == 401
    assert (await running.post("github", body, headers_for(body, signature)))[0] == 202


async def test_rotated_secrets_are_all_accepted(start_bridge: StartBridge) -> None:
    running = await start_bridge({**GITHUB, "secrets": ["the old secret", "the new secret"]})
    body = fixture_bytes(BODY_FIXTURE)
    for secret in ("the old secret", "the new secret"):
        assert (await running.post("github", body, headers_for(body, github_signature(body, secret))))[0] == 202
    assert (await running.post("github", body, headers_for(body, github_signature(body, SECRET))))[0] == 401


async def test_secret_file_is_reread_on_rotation(start_bridge: StartBridge, tmp_path: Path) -> None:
    secret_file = tmp_path / "github-secret"
    secret_file.write_text("first\n")
    running = await start_bridge({**GITHUB, "secrets": [], "secret_files": [str(secret_file)]})
    body = fixture_bytes(BODY_FIXTURE)
    assert (await running.post("github", body, headers_for(body, github_signature(body, "first"))))[0] == 202
    # Kubernetes updates the mounted Secret: both lines are valid during the rotation.
    secret_file.write_text("second\nthird\n")
    assert (await running.post("github", body, headers_for(body, github_signature(body, "first"))))[0] == 401
    assert (await running.post("github", body, headers_for(body, github_signature(body, "third"))))[0] == 202
    secret_file.unlink()
    status, answer = await running.post("github", body, headers_for(body, github_signature(body, "third")))
    assert (status, answer) == (503, {"error": "the bridge cannot read this source's secret; retry later"})


async def test_source_without_secret_is_a_configuration_error(tmp_path: Path) -> None:
    queue = await DurableQueue.open(tmp_path / "q.db")
    try:
        with pytest.raises(SourceConfigError) as raised:
            create({"name": "github", "type": "github"}, SourceContext(settings=load_settings(None, ingest={"allow_unauthenticated": True}), queue=queue))
        assert str(raised.value) == ("source 'github': set `secrets` or `secret_files` "
                                     "(or `allow_unauthenticated: true`)")
    finally:
        await queue.close()
