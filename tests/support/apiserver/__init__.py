"""A faithful in-process fake Kubernetes apiserver for tests (see :mod:`.fake_apiserver`)."""

from .fake_apiserver import FIXTURES_DIR, ApiStatusError, FakeApiServer, RecordedRequest, load_manifests

__all__ = ["FIXTURES_DIR", "ApiStatusError", "FakeApiServer", "RecordedRequest", "load_manifests"]
