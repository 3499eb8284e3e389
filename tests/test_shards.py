"""The shard formats on real files: round trips, stock readers, integrity, atomic commit, encoding errors."""
from __future__ import annotations

import struct
import tarfile

import numpy as np
import pytest
import webdataset
import zarr
from zarr.codecs import ShardingCodec

from shards.atomic import atomic_write_bytes, is_temporary, remove_temporaries, temporary_path
from shards.codecs import encode_arrays
from shards.formats import FORMATS, open_reader, open_writer, pack_clip, shard_filename
from shards.integrity import ShardCorruptError, array_checksum
from shards.schema import FieldSpec

# Every storage dtype and every codec appears; levels outside gzip's 1..9 exercise the WebDataset clip.
SPECS = [
    FieldSpec("frames", (3, 6, 8, 3), "uint8", "zstd", 3),
    FieldSpec("timestamps", (3,), "float64", "none"),
    FieldSpec("latents", (2, 5, 7), "float16", "blosc-lz4", 5),
    FieldSpec("depth", (3, 6, 8), "float32", "gzip", 0),
    FieldSpec("flow", (2, 3, 6, 8), "float16", "zstd", 19),
    FieldSpec("dyn_mask", (3, 6, 8), "float16", "none"),
    FieldSpec("scale", (), "float32", "zstd", 1),
]
N_CLIPS = 4


def make_clip(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Teacher-like outputs in their natural dtypes (int64 frames, float32/float64 maps) before encoding."""
    return {
        "frames": rng.integers(0, 256, size=(3, 6, 8, 3)),
        "timestamps": np.sort(rng.uniform(0, 10, size=3)),
        "latents": rng.standard_normal((2, 5, 7)).astype(np.float32) * 3,
        "depth": rng.uniform(0.1, 80, size=(3, 6, 8)),
        "flow": rng.standard_normal((2, 3, 6, 8)).astype(np.float32),
        "dyn_mask": rng.random((3, 6, 8)) > 0.5,
        "scale": np.float64(rng.uniform(1, 2)),
    }


@pytest.fixture(scope="module")
def clips() -> list[tuple[str, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    return [(f"{i:02x}c0ffee{i}", encode_arrays(SPECS, make_clip(rng))) for i in range(N_CLIPS)]


def write_shard(fmt, directory, clips, name="shard-000"):
    path = directory / shard_filename(fmt, name)
    writer = open_writer(fmt, path, SPECS)
    stored = [writer.add(key, arrays) for key, arrays in clips]
    assert writer.commit() == path
    return path, stored


def assert_same_arrays(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype, name
        assert got[name].shape == array.shape, name
        np.testing.assert_array_equal(got[name], array, err_msg=name)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_every_dtype_and_codec(tmp_path, clips, fmt):
    path, stored = write_shard(fmt, tmp_path, clips)
    reader = open_reader(fmt, path, SPECS)
    assert reader.cache_keys() == [key for key, _ in clips]
    assert len(reader) == N_CLIPS
    for row, ((key, arrays), clip) in enumerate(zip(clips, stored)):
        assert clip.row == row
        assert clip.nbytes == sum(s.nbytes for s in SPECS)
        assert clip.checksums == {name: array_checksum(a) for name, a in arrays.items()}
        assert_same_arrays(reader.read(row, checksums=clip.checksums), arrays)
    iterated = list(reader)
    assert [key for key, _ in iterated] == reader.cache_keys()
    for (_, got), (_, arrays) in zip(iterated, clips):
        assert_same_arrays(got, arrays)


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_subset_of_fields(tmp_path, clips, fmt):
    path, stored = write_shard(fmt, tmp_path, clips)
    reader = open_reader(fmt, path, SPECS)
    got = reader.read(2, fields=["latents", "timestamps"], checksums=stored[2].checksums)
    assert_same_arrays(got, {f: clips[2][1][f] for f in ["latents", "timestamps"]})
    with pytest.raises(ValueError, match="'normals'"):
        reader.read(0, fields=["normals"])
    with pytest.raises(IndexError):
        reader.read(N_CLIPS)


def test_formats_return_identical_arrays(tmp_path, clips):
    readers, stored = {}, {}
    for fmt in FORMATS:
        path, stored[fmt] = write_shard(fmt, tmp_path, clips)
        readers[fmt] = open_reader(fmt, path, SPECS)
    assert stored["zarr"] == stored["wds"]
    assert readers["zarr"].cache_keys() == readers["wds"].cache_keys()
    for row in range(N_CLIPS):
        assert_same_arrays(readers["zarr"].read(row), readers["wds"].read(row))


def test_stock_zarr_opens_the_shard_and_reads_a_field_alone(tmp_path, clips):
    path, _ = write_shard("zarr", tmp_path, clips)
    group = zarr.open_group(path, mode="r")
    assert group.attrs["cache_keys"] == [key for key, _ in clips]
    for spec in SPECS:
        array = group[spec.name]
        assert array.shape == (N_CLIPS, *spec.shape)
        assert array.chunks == (1, *spec.shape)
        assert array.shards == (N_CLIPS, *spec.shape)
        assert isinstance(array.metadata.codecs[0], ShardingCodec)
        assert len([p for p in (path / spec.name).rglob("*") if p.is_file() and p.name != "zarr.json"]) == 1
    np.testing.assert_array_equal(group["depth"][2], clips[2][1]["depth"])


def test_stock_webdataset_decodes_every_clip(tmp_path, clips):
    path, _ = write_shard("wds", tmp_path, clips)
    samples = list(webdataset.WebDataset(str(path), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == [key for key, _ in clips]
    for sample, (key, arrays) in zip(samples, clips):
        assert sample["cache_key.txt"] == key
        for spec in SPECS:
            member = f"{spec.name}.npy" if spec.codec == "none" else f"{spec.name}.npy.gz"
            np.testing.assert_array_equal(sample[member], arrays[spec.name], err_msg=spec.name)
            assert sample[member].dtype == arrays[spec.name].dtype


def flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def zarr_chunk_range(shard_dir, field, row):
    """(file, offset, size) of a clip's chunk in a field's shard file, from the index at the file's end."""
    (data_file,) = [p for p in (shard_dir / field / "c").rglob("*") if p.is_file()]
    raw = data_file.read_bytes()
    index = raw[-(16 * N_CLIPS + 4) : -4]  # (offset, nbytes) uint64 pairs, then a crc32c
    offset, size = struct.unpack_from("<QQ", index, 16 * row)
    return data_file, offset, size


def wds_member_range(path, name):
    with tarfile.open(path) as tar:
        member = tar.getmember(name)
        return member.offset_data, member.size


def assert_names_clip(error, path, key, field):
    message = str(error.value)
    assert str(path) in message and key in message and field in message
    assert (error.value.cache_key, error.value.field) == (key, field)


# (field, where in its stored bytes, whether decoding alone fails): an uncompressed flip decodes to
# wrong values that only the checksum catches; a flip in a compressed frame header cannot decode.
@pytest.mark.parametrize("field, at_start, undecodable", [("dyn_mask", False, False), ("flow", True, True)])
def test_zarr_flipped_byte_is_reported_for_that_clip_and_field(tmp_path, clips, field, at_start, undecodable):
    path, stored = write_shard("zarr", tmp_path, clips)
    data_file, offset, size = zarr_chunk_range(path, field, row=1)
    flip_byte(data_file, offset if at_start else offset + size // 2)
    reader = open_reader("zarr", path, SPECS)
    key = clips[1][0]
    with pytest.raises(ShardCorruptError) as error:
        reader.read(1, fields=[field], checksums=stored[1].checksums)
    assert_names_clip(error, path, key, field)
    if undecodable:
        with pytest.raises(ShardCorruptError) as error:
            reader.read(1, fields=[field])
        assert_names_clip(error, path, key, field)
    for row in (0, 2, 3):
        assert_same_arrays(reader.read(row, checksums=stored[row].checksums), clips[row][1])
    others = [s.name for s in SPECS if s.name != field]
    reader.read(1, fields=others, checksums=stored[1].checksums)


@pytest.mark.parametrize("member, undecodable", [("dyn_mask.npy", False), ("flow.npy.gz", True)])
def test_wds_flipped_byte_is_reported_for_that_clip_and_field(tmp_path, clips, member, undecodable):
    path, stored = write_shard("wds", tmp_path, clips)
    key = clips[1][0]
    field = member.split(".")[0]
    offset, size = wds_member_range(path, f"{key}.{member}")
    flip_byte(path, offset + size // 2)
    reader = open_reader("wds", path, SPECS)
    with pytest.raises(ShardCorruptError) as error:
        reader.read(1, fields=[field], checksums=stored[1].checksums)
    assert_names_clip(error, path, key, field)
    if undecodable:
        with pytest.raises(ShardCorruptError) as error:
            reader.read(1, fields=[field])
        assert_names_clip(error, path, key, field)
    for row in (0, 2, 3):
        assert_same_arrays(reader.read(row, checksums=stored[row].checksums), clips[row][1])
    others = [s.name for s in SPECS if s.name != field]
    reader.read(1, fields=others, checksums=stored[1].checksums)


def test_checksum_covers_dtype_and_shape_not_only_bytes():
    array = np.arange(12, dtype=np.float16).reshape(3, 4)
    assert array_checksum(array) == array_checksum(array.copy())
    assert array_checksum(array) != array_checksum(array.reshape(4, 3))
    assert array_checksum(array) != array_checksum(array.view(np.uint8))


def test_wds_damaged_tar_header_is_not_taken_for_the_end(tmp_path, clips):
    # tarfile silently stops at a damaged header after the first: the clips behind it would vanish.
    path, _ = write_shard("wds", tmp_path, clips)
    offset, _ = wds_member_range(path, f"{clips[2][0]}.frames.npy.gz")
    flip_byte(path, offset - tarfile.BLOCKSIZE + 3)  # inside the member name of that header
    with pytest.raises(ShardCorruptError, match=str(path)):
        open_reader("wds", path, SPECS)


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_keeps_what_was_added_when_the_caller_reuses_its_buffers(tmp_path, clips, fmt):
    path = tmp_path / shard_filename(fmt, "shard-000")
    writer = open_writer(fmt, path, SPECS)
    buffers = {name: array.copy() for name, array in clips[0][1].items()}
    stored = writer.add(clips[0][0], buffers)
    for array in buffers.values():
        array[...] = 0
    writer.commit()
    assert_same_arrays(open_reader(fmt, path, SPECS).read(0, checksums=stored.checksums), clips[0][1])


@pytest.mark.parametrize("fmt", FORMATS)
def test_only_a_temporary_exists_before_commit_and_abort_removes_it(tmp_path, clips, fmt):
    path = tmp_path / shard_filename(fmt, "shard-000")
    writer = open_writer(fmt, path, SPECS)
    writer.add(*clips[0])
    assert len(writer) == 1
    (entry,) = tmp_path.iterdir()
    assert not path.exists() and is_temporary(entry) and entry.name.startswith(path.name)
    writer.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_commit_refuses_to_overwrite_a_committed_shard(tmp_path, clips, fmt):
    path = tmp_path / shard_filename(fmt, "shard-000")
    first, second = open_writer(fmt, path, SPECS), open_writer(fmt, path, SPECS)
    first.add(*clips[0])
    second.add(*clips[3])
    first.commit()
    with pytest.raises(FileExistsError):
        second.commit()
    with pytest.raises(FileExistsError):
        open_writer(fmt, path, SPECS)
    assert list(tmp_path.iterdir()) == [path]
    assert open_reader(fmt, path, SPECS).cache_keys() == [clips[0][0]]


def test_remove_temporaries_removes_leftovers_and_nothing_else(tmp_path, clips):
    root = tmp_path / "cache"
    committed = {}
    for fmt in FORMATS:
        (root / "shards" / fmt).mkdir(parents=True)
        committed[fmt], _ = write_shard(fmt, root / "shards" / fmt, clips[:1])
        crashed = open_writer(fmt, root / "shards" / fmt / shard_filename(fmt, "shard-001"), SPECS)
        crashed.add(*clips[1])  # never committed nor aborted: what a killed worker leaves
    (root / "manifests").mkdir()
    stray = temporary_path(root / "manifests" / "part-000.parquet")
    stray.write_bytes(b"half a parquet")
    keep = [root / "manifests" / "notes.tmp-1", root / "manifests" / "x.tmp-0123456789abcdeg"]
    for path in keep:
        path.write_bytes(b"not ours")

    removed = remove_temporaries(root)

    assert len(removed) == 3 and stray in removed and all(is_temporary(p) for p in removed)
    assert not any(p.exists() for p in removed)
    assert all(p.exists() for p in keep)
    for fmt, path in committed.items():
        assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
        assert_same_arrays(open_reader(fmt, path, SPECS).read(0), clips[0][1])


def test_atomic_write_bytes(tmp_path):
    path = tmp_path / "part-000.parquet"
    atomic_write_bytes(path, b"first")
    with pytest.raises(FileExistsError):
        atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"first"
    atomic_write_bytes(path, b"third", replace=True)
    assert path.read_bytes() == b"third"
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(
    "change, field, words",
    [
        (lambda a: a.update(depth=np.zeros((3, 6, 9))), "depth", ["(3, 6, 8)", "(3, 6, 9)"]),
        (lambda a: a.pop("flow"), "flow", ["missing"]),
        (lambda a: a.update(normals=np.zeros(3)), "normals", ["not in the schema"]),
        (lambda a: a["latents"].__setitem__((0, 0, 0), np.nan), "latents", ["finite", "1 NaN"]),
        (lambda a: a["flow"].__setitem__((0, 0, 0, 0), 1e6), "flow", ["float16"]),
        (lambda a: a["frames"].__setitem__((0, 0, 0, 0), 256), "frames", ["[0, 255]", "256"]),
    ],
    ids=["shape", "missing", "extra", "nan", "fp16-overflow", "uint8-range"],
)
def test_encode_arrays_errors_name_the_field(change, field, words):
    arrays = make_clip(np.random.default_rng(1))
    change(arrays)
    with pytest.raises(ValueError, match=f"field '{field}'") as error:
        encode_arrays(SPECS, arrays)
    assert all(word in str(error.value) for word in words), str(error.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_writer_rejects_arrays_that_were_not_encoded(tmp_path, clips, fmt):
    writer = open_writer(fmt, tmp_path / shard_filename(fmt, "s"), SPECS)
    arrays = dict(clips[0][1], latents=clips[0][1]["latents"].astype(np.float32))
    with pytest.raises(ValueError, match="field 'latents'.*float16.*float32"):
        writer.add("abc", arrays)
    with pytest.raises(ValueError, match="cache_key"):
        writer.add("a.b", clips[0][1])
    writer.abort()


def comparable_bytes(path, rows: int) -> bytes:
    """A file's bytes, the compression time in the header of each gzip chunk of a Zarr shard file of
    `rows` clips zeroed: numcodecs' GZip writes time.time() there, so two writes a second apart differ
    in it alone. The shard file ends with its index, (offset, length) per clip, then a 4-byte crc32c."""
    data = bytearray(path.read_bytes())
    if path.name == "zarr.json" or path.suffix == ".tar":
        return bytes(data)
    index = np.frombuffer(bytes(data[len(data) - 4 - 16 * rows: len(data) - 4]), dtype="<u8").reshape(-1, 2)
    for offset, length in index:
        if offset != 2**64 - 1 and data[offset: offset + 3] == b"\x1f\x8b\x08":  # gzip magic, deflate
            data[offset + 4: offset + 8] = bytes(4)
    return bytes(data)


def test_zarr_shard_files_are_byte_identical_to_zarr_writing_the_stacked_clips(tmp_path, clips):
    # The writer compresses each clip as it arrives and assembles the shard file itself; zarr writing
    # the same stacked arrays in one call is the reference. A clip of zeros (the fill value) is left out
    # of the shard by zarr: the writer must leave it out the same way.
    zero = {name: np.zeros_like(array) for name, array in clips[0][1].items()}
    rows = [*clips, ("00zero", zero)]
    path, _ = write_shard("zarr", tmp_path, rows)
    reference = zarr.open_group(tmp_path / "reference.zarr", mode="w-", zarr_format=3)
    for name in rows[0][1]:
        data = np.stack([arrays[name] for _, arrays in rows])
        written = zarr.open_array(path / name, mode="r")
        reference.create_array(name, data=data, chunks=written.chunks, shards=written.shards,
                               compressors=written.compressors, fill_value=0)
        ours, theirs = path / name, tmp_path / "reference.zarr" / name
        files = sorted(p.relative_to(ours) for p in ours.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(theirs) for p in theirs.rglob("*") if p.is_file()), name
        for rel in files:  # zarr.json and the shard file
            assert comparable_bytes(ours / rel, len(rows)) == comparable_bytes(theirs / rel, len(rows)), (name, rel)
        np.testing.assert_array_equal(written[len(rows) - 1], zero[name])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_clip_packed_elsewhere_is_stored_as_add_stores_it(tmp_path, clips, fmt):
    # The caching job packs (serializes, compresses, checksums) in its encode tasks and the writer only
    # appends: the shard and the manifest's record must equal those of add().
    (tmp_path / "direct").mkdir()
    (tmp_path / "packed").mkdir()
    direct, stored_direct = write_shard(fmt, tmp_path / "direct", clips)
    path = tmp_path / "packed" / direct.name
    writer = open_writer(fmt, path, SPECS)
    stored = [writer.add_packed(key, pack_clip(fmt, SPECS, arrays)) for key, arrays in clips]
    writer.commit()
    assert stored == stored_direct
    files = sorted(p.relative_to(direct) for p in direct.rglob("*") if p.is_file()) if direct.is_dir() else [""]
    assert files and all(comparable_bytes(direct / rel, N_CLIPS) == comparable_bytes(path / rel, N_CLIPS) for rel in files)


def test_writer_refuses_a_clip_packed_for_another_format_or_fields(tmp_path, clips):
    writer = open_writer("zarr", tmp_path / "shard-000.zarr", SPECS)
    with pytest.raises(ValueError, match=r"shard-000\.zarr.*packed for 'wds'"):
        writer.add_packed(clips[0][0], pack_clip("wds", SPECS, clips[0][1]))
    with pytest.raises(ValueError, match=r"shard-000\.zarr.*other stored arrays.*\['depth', 'dyn_mask', 'flow', 'scale'\]"):
        writer.add_packed(clips[0][0], pack_clip("zarr", SPECS[:3], {k: clips[0][1][k] for k in ("frames", "timestamps", "latents")}))
    stronger = [FieldSpec(s.name, s.shape, s.dtype, s.codec, 9) if s.name == "frames" else s for s in SPECS]
    with pytest.raises(ValueError, match=r"shard-000\.zarr.*other stored arrays.*\['frames'\]"):
        writer.add_packed(clips[0][0], pack_clip("zarr", stronger, clips[0][1]))
    assert len(writer) == 0
