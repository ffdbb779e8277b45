"""Fixtures of the container tests (each module is marked ``containers``; they need podman)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.containers.podman import AGENT_IMAGE, REPO, build, ensure_base_image, require_podman


@pytest.fixture(scope="session")
def agent_image() -> Iterator[str]:
    """The project's Dockerfile built on the local Debian base (layer cache makes a rebuild quick)."""
    require_podman()
    ensure_base_image()
    build(AGENT_IMAGE, REPO)
    yield AGENT_IMAGE
