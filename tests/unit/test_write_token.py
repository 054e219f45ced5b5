"""After a failed condition, only an object bearing this write's own token is this write's success."""

from __future__ import annotations

import pytest

from kubesonar.shared.errors import VersionConflict
from kubesonar.shared.write_token import LINEAGE_BUDGET, LINEAGE_KEY, METADATA_KEY, Lineages, WriteToken


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


def test_a_write_built_on_ours_still_says_where_ours_landed():
    ours = WriteToken()
    theirs = WriteToken.replacing("v7", (ours.metadata, "v7"))
    later = WriteToken.replacing("v8", (theirs.metadata, "v8"))
    assert later.built_on == ((theirs.value, "v8"), (ours.value, "v7"))
    assert ours.landed_or_conflict("k", lambda: (later.metadata, "v9")) == "v7"  # landed, superseded since
    with pytest.raises(VersionConflict):
        WriteToken().landed_or_conflict("k", lambda: (later.metadata, "v9"))


def test_only_the_version_replaced_is_built_on():
    """A write conditioned on v7 was built on v7's bytes; the metadata of any other version (read before
    another writer's, or of an object since deleted) would name writes whose change it may not hold."""
    ours = WriteToken()
    for replaced in (None, (ours.metadata, "v8"), ({}, "v7"), (None, "v7")):
        assert WriteToken.replacing("v7", replaced).built_on == ()
        assert LINEAGE_KEY not in WriteToken.replacing("v7", replaced).metadata


def test_an_object_written_before_lineages_is_built_on_all_the_same():
    old = {METADATA_KEY: "0" * 32}  # a single token, as every object written before this change
    assert WriteToken.replacing("v7", (old, "v7")).built_on == (("0" * 32, "v7"),)


def test_the_lineage_keeps_the_newest_writes_within_its_budget():
    s3_etag = '"' + "d" * 32 + '"'  # S3's versions are the longest: 34 characters
    token = WriteToken()
    for n in range(40):
        token = WriteToken.replacing(f"{s3_etag[:-3]}{n:02d}\"", (token.metadata, f"{s3_etag[:-3]}{n:02d}\""))
    lineage = token.metadata[LINEAGE_KEY]
    assert len(lineage) <= LINEAGE_BUDGET and len(token.built_on) == 15
    assert token.built_on[0][1].endswith('39"') and token.built_on[-1][1].endswith('25"')  # newest first
    assert sum(len(k) + len(v) for k, v in token.metadata.items()) < 2048 - 512  # S3: 2 KB of user metadata


def test_a_store_builds_on_the_version_it_read_last_else_reads_it():
    lineages, ours, asked = Lineages(keys=2), WriteToken(), []

    def read_back():
        asked.append(1)
        return ours.metadata, "v1"

    assert lineages.token_for("k", None, read_back).built_on == () and not asked  # a create or a plain put
    lineages.note("k", ours.metadata, "v1")
    assert lineages.token_for("k", "v1", read_back).built_on == ((ours.value, "v1"),) and not asked
    lineages.note("k", {}, "v2")  # read again since: a write conditioned on v1 asks the store
    assert lineages.token_for("k", "v1", read_back).built_on == ((ours.value, "v1"),) and asked == [1]
    lineages.note("a", {}, "x")
    lineages.note("b", {}, "x")  # 'k' is forgotten: only the last keys are kept
    assert lineages.token_for("k", "v1", read_back).built_on and asked == [1, 1]
