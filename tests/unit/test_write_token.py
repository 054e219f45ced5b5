"""After a failed condition, only an object bearing this write's own token is this write's success."""

from __future__ import annotations

import pytest

from kubesonar.shared.errors import VersionConflict
from kubesonar.shared.write_token import METADATA_KEY, WriteToken


def test_our_token_is_our_landed_version():
    token = WriteToken()
    assert token.landed_or_conflict("k", lambda: ({METADATA_KEY: token.value, "other": "x"}, "v7")) == "v7"


@pytest.mark.parametrize("current", [None, (None, "v7"), ({}, "v7"), ({METADATA_KEY: "another-writer"}, "v7")],
                         ids=["gone", "no metadata", "no token", "another token"])
def test_anything_else_is_a_conflict(current):
    with pytest.raises(VersionConflict, match="k: changed since it was read"):
        WriteToken().landed_or_conflict("k", lambda: current)


def test_each_write_has_a_token_of_its_own():
    assert WriteToken().value != WriteToken().value
    assert WriteToken("abc").metadata == {METADATA_KEY: "abc"}
