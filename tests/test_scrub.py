"""The cache scrub (pipeline/scrub.py) on real caches of both formats: a flipped byte inside one clip's
field and a truncated shard are found (shard, clip, field), the scrub exits non-zero, --repair marks
exactly those clips missing, the caching job's rerun recomputes exactly them, and the cache then
verifies clean."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from conftest import copy_scenes
from manifests.clips_table import current_clips, read_clips_table
from pipeline.config import JobConfig, OutputConfig, TeacherConfig
from pipeline.runner import run_job
from pipeline.sampling import SamplingConfig
from pipeline.scrub import DAMAGED_EXIT_CODE, main as scrub_main

SCENES = ["scene_0000", "scene_0001", "scene_0002", "scene_0003"]


def job(videos: Path, cache: Path, fmt: str) -> JobConfig:
    # Two clips per shard: a damaged shard holds an intact clip beside a damaged one.
    return JobConfig(videos=str(videos), out=str(cache), sampling=SamplingConfig(num_frames=16),
                     teacher=TeacherConfig(name="oracle", latent_dim=16, batch_size=1),
                     output=OutputConfig(format=fmt, clips_per_shard=2), max_inflight=1)


def clip_byte_range(cache: Path, row: dict, field: str) -> tuple[Path, int, int]:
    """(file, offset, size) of one clip's stored bytes of `field`, found with the formats' own layouts:
    the tar member's data, or the clip's inner chunk in the Zarr sharding file (its index: (offset,
    length) per clip as little-endian uint64 at the end of the file, then a 4-byte crc32c)."""
    shard = cache / row["shard"]
    if row["format"] == "wds":
        with tarfile.open(shard) as tar:
            member = next(m for m in tar if m.name.startswith(f"{row['cache_key']}.{field}.npy"))
            return shard, member.offset_data, member.size
    (data,) = [p for p in (shard / field / "c").rglob("*") if p.is_file()]
    clips = len(json.loads((shard / "zarr.json").read_text())["attributes"]["cache_keys"])
    raw = data.read_bytes()
    index = np.frombuffer(raw[-(16 * clips + 4):-4], dtype="<u8").reshape(clips, 2)
    offset, size = index[row["row"]]
    return data, int(offset), int(size)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def truncate_shard(cache: Path, row: dict) -> None:
    """Cut the shard to half (a write stopped by a full quota): a tar, or one field's sharding file."""
    shard = cache / row["shard"]
    path = shard if row["format"] == "wds" else next(p for p in (shard / "depth" / "c").rglob("*") if p.is_file())
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def scrub(cache: Path, capsys, *args: str) -> tuple[int, list[str]]:
    code = scrub_main([str(cache), "--workers", "2", *args])
    return code, capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("fmt", ["wds", "zarr"])
def test_scrub_finds_a_flipped_byte_and_a_truncated_shard_and_repair_recomputes_exactly_them(
        synthetic_set, ray_session, tmp_path, capsys, fmt):
    copy_scenes(synthetic_set, tmp_path, SCENES)
    cache = tmp_path / "cache"
    run_job(job(tmp_path / "videos", cache, fmt))
    code, out = scrub(cache, capsys)
    assert code == 0 and out[-1].startswith("scrub: 4 clips in 2 shards,") and out[-1].endswith(": 0 damaged"), out

    rows = sorted(current_clips(read_clips_table(cache)).values(), key=lambda r: (r["shard"], r["row"]))
    assert [r["row"] for r in rows] == [0, 1, 0, 1] and rows[0]["shard"] == rows[1]["shard"] != rows[2]["shard"]
    path, offset, size = clip_byte_range(cache, rows[1], "latents")
    flip_byte(path, offset + size // 2)  # inside the second clip's latents: its neighbour stays intact
    truncate_shard(cache, rows[2])  # the other shard: both of its clips lost
    damaged = {rows[1]["cache_key"], rows[2]["cache_key"], rows[3]["cache_key"]}

    code, out = scrub(cache, capsys)
    assert code == DAMAGED_EXIT_CODE
    assert out[-1].endswith(": 3 damaged"), out
    lines = out[:-1]
    assert len(lines) == 3
    flipped = next(line for line in lines if rows[1]["clip_id"] in line)
    assert flipped.startswith(f"damaged: shard {rows[1]['shard']}, clip {rows[1]['clip_id']} (cache_key "
                              f"{rows[1]['cache_key']}), field latents: ")
    for row in rows[2:]:
        assert any(line.startswith(f"damaged: shard {row['shard']}, clip {row['clip_id']} ") for line in lines), lines
    assert not any(rows[0]["clip_id"] in line for line in lines), "the intact neighbour is not reported"

    code, out = scrub(cache, capsys, "--repair")
    assert code == DAMAGED_EXIT_CODE
    assert set(current_clips(read_clips_table(cache))) == {rows[0]["cache_key"]}, "exactly the damaged are missing"

    summary = run_job(job(tmp_path / "videos", cache, fmt))
    assert summary["clips"] == {"wanted": 4, "already_cached": 1, "computed": 3, "ok": 3, "failed": 0}
    recomputed = current_clips(read_clips_table(cache))
    assert set(recomputed) == {r["cache_key"] for r in rows} and all(r["status"] == "ok" for r in recomputed.values())
    assert {recomputed[k]["shard"] for k in damaged}.isdisjoint({rows[1]["shard"], rows[2]["shard"]}), \
        "recomputed into new shards"
    assert recomputed[rows[0]["cache_key"]]["shard"] == rows[0]["shard"], "the intact clip was not recomputed"
    code, out = scrub(cache, capsys)
    assert code == 0 and out[-1].startswith("scrub: 4 clips in") and out[-1].endswith(": 0 damaged"), out
