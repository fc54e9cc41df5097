"""import_tfdbg ends its store with the clean-close trailer a DumpWriter leaves.

Real tfdbg dumps (the golden tfdbg directory), a real import, real files:
the imported store's writer_close carries ``shards`` (bytes, frames,
frame_crc per shard file), so damage done to it later is reported as
corruption by the reader and by ``verify``, not ignored as a torn tail.
"""

import glob
import os

import pytest

from conftest import scan_store
from tfdump_fast import DumpReader, import_tfdbg
from tfdump_fast.errors import TfdumpCorruptionError

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN_TFDBG = os.path.join(HERE, "data", "golden_v1", "tfdbg")


def imported(tmp_path):
    root = str(tmp_path / "imported")
    import_tfdbg(GOLDEN_TFDBG, root)
    data = [p for p in glob.glob(os.path.join(root, "*.tfds")) if not p.endswith("-meta.tfds")]
    assert len(data) == 1
    return root, data[0]


def test_import_writes_the_trailer(tmp_path):
    root, data = imported(tmp_path)
    _, events = scan_store(root)
    close = [e for e in events if e["event"] == "writer_close"]
    assert len(close) == 1 and "shards" in close[0]
    shards = close[0]["shards"]
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "*.tfds")))
    assert sorted(shards) == names
    assert shards[os.path.basename(data)]["bytes"] == os.path.getsize(data)
    assert all(s["frames"] >= 1 and s["frame_crc"] != 0 for s in shards.values())
    assert DumpReader(root).verify() == []


def test_damage_to_an_imported_store_is_corruption(tmp_path):
    root, data = imported(tmp_path)
    with open(data, "r+b") as f:  # cut the last frame in half: a torn tail, were there no trailer
        f.truncate(os.path.getsize(data) - 7)
    with pytest.raises(TfdumpCorruptionError, match="closed it cleanly"):
        DumpReader(root)
    problems = DumpReader(root, on_corruption="skip").verify()
    assert any("closed it cleanly" in p for p in problems), problems
