"""Shard file names (docs/FORMAT.md, "Files"): ``w<writer_id:016x>-<index>.tfds``
for data shards and ``w<writer_id:016x>-meta.tfds`` for the metadata shard.

The writer, the importer and the reader all name or recognise shards here.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

from tfdump_fast import _native

SHARD_SUFFIX = ".tfds"
_SHARD_NAME_RE = re.compile(r"^w([0-9a-fA-F]{16})-(\d+|meta)\.tfds$")


class ShardName(NamedTuple):
    """What a shard's file name says: its writer and its index."""

    writer_id: int
    index: int  # _native.META_SHARD_INDEX for the metadata shard


def writer_name(writer_id: int) -> str:
    """``w<writer_id:016x>``: the writer's name in file names and META events."""
    return "w%016x" % writer_id


def shard_file_name(writer_id: int, index: int) -> str:
    """The file name of shard ``index`` of a writer (META_SHARD_INDEX: its metadata shard)."""
    part = "meta" if index == _native.META_SHARD_INDEX else str(int(index))
    return f"{writer_name(writer_id)}-{part}{SHARD_SUFFIX}"


def parse_shard_file_name(name: str) -> Optional[ShardName]:
    """The writer and index a shard file name encodes, or None for any other name."""
    m = _SHARD_NAME_RE.match(name)
    if m is None:
        return None
    index = _native.META_SHARD_INDEX if m.group(2) == "meta" else int(m.group(2))
    return ShardName(int(m.group(1), 16), index)
