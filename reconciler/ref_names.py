"""The grammar of a release tag's name, shared by everyone who reads or admits one: the
agent's fetch, offline bundles, the pre-receive hook and the release listing."""

from __future__ import annotations

import re

# 1 to 18 digits without a leading zero: one spelling per version, and every one fits in a
# signed 64-bit integer.
RELEASE_REF = re.compile(r"^refs/tags/release/([1-9][0-9]{0,17})$")


def release_version(ref: str) -> int | None:
    """The version a full ref name (`refs/tags/release/<N>`) names, or None."""
    found = RELEASE_REF.match(ref)
    return int(found.group(1)) if found else None
