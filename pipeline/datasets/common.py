"""What every dataset adapter shares: row errors that name the file, the row and the field; typed
field readers; the strict / lenient row loop; media paths confined to the dataset root; and the
multiple-choice prompt layout the evaluators score.

An adapter turns one dataset's native annotation files into rows of manifests.schemas.SAMPLES_SCHEMA
(`video`: the video's path relative to the dataset root, or absolute when it lies under a video root
the user named) plus, per row, the clip it needs (`CLIP`: the resolved file and the span of it; not a
samples-table column). Native field names drift between releases, so every field is read through
these helpers and a malformed row never passes silently: strict mode raises RowError, lenient mode
records the row as skipped (file, row, field, reason) for summary.json.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from manifests.regions import check_marks
from pipeline.sources import Span
from shards.store import Store

LETTERS = "ABCDEFGHIJ"
IMAGES_DIR = Path("images")  # under the cache root: images/<dataset>/<sha256>.<ext>
_IMAGE_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
ANSWER_FORMAT = "Answer with the option's letter."
LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
CLIP = "clip"  # a row's ClipSource (or None: image-only); dropped when the rows become the samples table
# Some releases write options as "A. text" or "(A) text"; the letter is ours to assign.
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-J])[.):]\s+")


class RowError(ValueError):
    """A malformed annotation row: where it is and which field is wrong."""

    def __init__(self, file: Path | str, row: int | str, field_name: str, reason: str):
        self.file, self.row, self.field, self.reason = str(file), row, field_name, reason
        super().__init__(f"{file}: row {row}: field {field_name!r}: {reason}")

    def as_record(self) -> dict:
        return {"file": self.file, "row": self.row, "field": self.field, "reason": self.reason}


@dataclass(frozen=True)
class ClipSource:
    """The clip a sample needs: a video file (absolute, resolved inside its media root; it may be
    missing, and then becomes a failed clip row) and the part of it the clip covers."""

    path: Path
    span: Span | None = None


@dataclass
class AdapterResult:
    """A dataset's sample rows and the rows skipped (malformed in lenient mode, or dropped by the
    publisher); `images`: every image the rows name (path under the cache root -> bytes).

    media_dir: the cache root, where images are written; None validates them without writing (the
    --check preflight)."""

    dataset: str
    root: Path
    media_dir: Path | None = None
    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)

    def store_image(self, data: bytes, extension: str) -> str:
        """The image's path under the cache root (common.store_image), written unless validating."""
        path = store_image(self.media_dir, self.dataset, data, extension)
        self.images[path] = len(data)
        return path

    def skip(self, native: NativeRow, field_name: str, reason: str) -> None:
        """A row left out on purpose (not malformed: both modes skip it), counted with its reason."""
        self.skipped.append({"dataset": self.dataset, "file": str(native.file), "row": native.index,
                             "field": field_name, "reason": reason})


@dataclass(frozen=True)
class NativeRow:
    """One annotation record and where it came from, for error messages."""

    file: Path
    index: int | str
    data: dict

    def error(self, field_name: str, reason: str) -> RowError:
        return RowError(self.file, self.index, field_name, reason)

    def get(self, name: str, kind: type | tuple[type, ...], *, optional: bool = False):
        """The field `name`, checked to be of `kind` (and a non-empty string for str)."""
        if name not in self.data or self.data[name] is None:
            if optional:
                return None
            raise self.error(name, "missing")
        value = self.data[name]
        # bool is an int in Python; a boolean where a number is expected is a malformed row.
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
            raise self.error(name, f"expected {_kind_name(kind)}, got {type(value).__name__} {_short(value)}")
        if isinstance(value, str) and not value.strip():
            raise self.error(name, "empty string")
        return value

    def text(self, name: str, *, optional: bool = False) -> str | None:
        return self.get(name, str, optional=optional)

    def media(self, base: MediaRoot, name: str, value: str | None = None) -> Path:
        """The row's media file `base / <field name>` (or `base / value`, a path the adapter derived
        from that field), resolved, refused if it escapes `base` (absolute paths, `..` and symlinks
        out of it included); the file itself may be missing (it then becomes a failed clip row)."""
        value = self.text(name) if value is None else value
        if os.path.isabs(value):
            # Checked before joining: "videos/" + "/etc/passwd" would quietly become a path inside the root.
            raise self.error(name, f"path {value!r} escapes the dataset root {base.folder}: media paths are "
                                   "relative")
        path = base.resolve(value)
        if path is None:
            raise self.error(name, f"path {value!r} escapes the dataset root {base.folder}")
        return path


class MediaRoot:
    """A folder the media paths of annotation rows must stay inside (symlinks out of it included),
    resolved once, and each distinct path resolved once: rows repeat their videos, and a pathlib
    resolve per row made 100k RoboFAC rows take ~9 s instead of ~4 (bench/preflight.py)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.prefix = os.path.join(os.path.realpath(folder), "")
        self._resolved: dict[str, Path | None] = {}

    def resolve(self, relative: str) -> Path | None:
        """The real path of folder / relative, None when it lies outside the folder."""
        if relative not in self._resolved:
            real = os.path.realpath(os.path.join(self.folder, relative))
            self._resolved[relative] = Path(real) if os.path.join(real, "").startswith(self.prefix) else None
        return self._resolved[relative]

    def label(self, path: Path) -> str:
        """`path` relative to the folder when inside it, else absolute (a video root the user named)."""
        text = os.fspath(path)
        return text[len(self.prefix):] if text.startswith(self.prefix) else text


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind) -> str:
    return " or ".join(k.__name__ for k in _as_tuple(kind))


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def collect(result: AdapterResult, rows: Iterable[NativeRow], convert: Callable[[NativeRow], dict | list[dict]],
            lenient: bool) -> AdapterResult:
    """Convert native rows; a RowError stops the run (strict) or is recorded as skipped (lenient)."""
    seen = {row["sample_id"] for row in result.rows}
    for native in rows:
        try:
            converted = convert(native)
            converted = converted if isinstance(converted, list) else [converted]
            for row in converted:
                if row["sample_id"] in seen:
                    raise native.error("<id>", f"sample id {row['sample_id']!r} repeats an earlier row's")
        except RowError as e:
            if not lenient:
                raise
            result.skipped.append({"dataset": result.dataset, **e.as_record()})
            continue
        seen.update(row["sample_id"] for row in converted)
        result.rows.extend(converted)
    return result


def read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None


def json_records(path: Path) -> list[NativeRow]:
    """Rows of a JSON file holding a list of objects (a row that is not an object is malformed, and
    reported by the row loop like any other)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    return [NativeRow(path, i, row if isinstance(row, dict) else {"__not_an_object__": row})
            for i, row in enumerate(data)]


def require_object(native: NativeRow) -> None:
    if "__not_an_object__" in native.data:
        raise native.error("<row>", f"expected an object, got {_short(native.data['__not_an_object__'])}")


def parquet_records(path: Path, columns: list[str] | None = None, batch_size: int = 256) -> Iterable[NativeRow]:
    """Rows of a Parquet file, streamed in record batches: SAT_train.parquet is ONE ~5 GB row group,
    which pyarrow's defaults (pre-buffering whole column chunks) would read into memory at once."""
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 22)
    present = [c for c in columns if c in parquet.schema_arrow.names] if columns else None
    index = 0
    for batch in parquet.iter_batches(batch_size=batch_size, columns=present):
        for row in batch.to_pylist():
            yield NativeRow(path, index, row)
            index += 1


def table_records(path: Path) -> Iterable[NativeRow]:
    """Rows of a .json (list), .jsonl or .parquet annotation file."""
    if path.suffix == ".parquet":
        return parquet_records(path)
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                rows.append(NativeRow(path, i, json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append(NativeRow(path, i, {"__not_an_object__": f"invalid JSON: {e}"}))
        return rows
    return json_records(path)


def sample_id(dataset: str, native: NativeRow, id_field: str | None) -> str:
    """`dataset/<native id>` when the row has one, else a hash of the row's content, so that ids stay
    put when a release reorders its rows."""
    if id_field is not None and native.data.get(id_field) not in (None, ""):
        return f"{dataset}/{native.data[id_field]}"
    digest = hashlib.sha256(json.dumps(native.data, sort_keys=True, default=str).encode()).hexdigest()
    return f"{dataset}/{digest[:16]}"


class RowIds:
    """Ids for rows that have none: a hash of what the row is (so they stay put when a release reorders
    its rows), numbered when identical rows repeat (so both are kept, each under its own id)."""

    def __init__(self, dataset: str):
        self.dataset = dataset
        self.seen: Counter = Counter()

    def __call__(self, *parts) -> str:
        what = json.dumps(parts, sort_keys=True, default=str)
        self.seen[what] += 1
        digest = hashlib.sha256(f"{what}#{self.seen[what]}".encode()).hexdigest()
        return f"{self.dataset}/{digest[:16]}"


def option_texts(native: NativeRow, name: str, value) -> dict[str, str]:
    """Options as {letter: text}: from a list (letters assigned in order, any "A. " prefix dropped),
    or a dict keyed by letters."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise native.error(name, f"expected a list or a JSON object of options, got {_short(value)}") from None
    if isinstance(value, dict):
        options = {str(k).strip().upper(): v for k, v in value.items()}
        if sorted(options) != list(LETTERS[: len(options)]):
            raise native.error(name, f"option keys must be consecutive letters from A, got {sorted(options)}")
        options = dict(sorted(options.items()))
    elif isinstance(value, list):
        options = dict(zip(LETTERS, value))
        if len(value) > len(LETTERS):
            raise native.error(name, f"more than {len(LETTERS)} options")
    else:
        raise native.error(name, f"expected a list or a dict of options, got {type(value).__name__}")
    if len(options) < 2:
        raise native.error(name, f"a multiple-choice question needs at least 2 options, got {len(options)}")
    for letter, text in options.items():
        if not isinstance(text, (str, int, float)) or isinstance(text, bool) or not str(text).strip():
            raise native.error(name, f"option {letter} is not a non-empty text: {_short(text)}")
    return {letter: _LETTER_PREFIX.sub("", str(text)).strip() for letter, text in options.items()}


def answer_letter(native: NativeRow, name: str, options: dict[str, str], *, by_text: bool) -> str:
    """The correct option's letter, given as a letter (by_text False) or as the option's text."""
    value = native.get(name, (str, int, float))
    value = str(value).strip()
    if by_text:
        matches = [letter for letter, text in options.items() if text == _LETTER_PREFIX.sub("", value).strip()]
        if len(matches) != 1:
            raise native.error(name, f"answer {value!r} is {'not' if not matches else 'more than once'} among "
                                     f"the options {list(options.values())}")
        return matches[0]
    letter = _LETTER_PREFIX.sub(lambda m: m.group(1), value).strip().rstrip(".").upper()
    if letter not in options:
        raise native.error(name, f"answer {value!r} is not one of the option letters {list(options)}")
    return letter


def llava_turns(native: NativeRow, name: str, media_token: str) -> list[dict]:
    """LLaVA conversations -> [{"role", "content"}], alternating user / assistant from a user turn,
    with the media placeholder in the first user turn (added there if the release left it out)."""
    turns = native.get(name, list)
    out = []
    for i, turn in enumerate(turns):
        if not (isinstance(turn, dict) and isinstance(turn.get("value"), str) and turn.get("from") in LLAVA_ROLES):
            raise native.error(name, f"turn {i} is not {{'from': human|gpt, 'value': text}}: {turn!r:.80}")
        role = LLAVA_ROLES[turn["from"]]
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise native.error(name, f"turn {i} is from {turn['from']!r}: turns must alternate human, gpt, ...")
        out.append({"role": role, "content": turn["value"]})
    if len(out) < 2 or len(out) % 2:
        raise native.error(name, f"expected human/gpt pairs, got {len(out)} turn(s)")
    if not any(media_token in t["content"] for t in out if t["role"] == "user"):
        out[0] = {"role": "user", "content": f"{media_token}\n{out[0]['content']}"}
    return out


def multiple_choice(media_tokens: str, question: str, options: dict[str, str], answer: str) -> list[dict]:
    """The conversation of a multiple-choice question: the same layout as the synthetic set's
    (options listed as "A. text", answered "<letter>. <text>"), so one evaluator scores them all."""
    listed = "\n".join(f"{letter}. {text}" for letter, text in options.items())
    return [
        {"role": "user", "content": f"{media_tokens}\n{question.strip()}\n{listed}\n{ANSWER_FORMAT}"},
        {"role": "assistant", "content": f"{answer}. {options[answer]}"},
    ]


def choice_meta(options: dict[str, str], answer: str, **extra) -> str:
    """meta JSON of a multiple-choice row: what an evaluator needs to score it without the prompt."""
    return json.dumps({**extra, "options": options, "answer": answer, "answer_text": options[answer]},
                      sort_keys=True)


def checked_marks(native: NativeRow, field_name: str, conversations: list[dict], regions: list[dict] | None,
                  premarked: bool = False) -> None:
    """Every <obj_k> of the question must name a region with mark_id k (or a pre-marked image)."""
    where = f"{native.file}: row {native.index}"
    try:
        check_marks(conversations, regions or [], where=where, premarked=premarked)
    except ValueError as e:
        raise native.error(field_name, str(e).removeprefix(f"{where}: ")) from None


def sample_row(*, sample_id: str, dataset: str, split: str, conversations: list[dict], meta: str,
               root: MediaRoot, clip: ClipSource | None = None, images: list[str] | None = None,
               regions: list[dict] | None = None) -> dict:
    """A samples-table row (+ its CLIP); `video` is the clip's file relative to the dataset root
    `root`, or absolute when it lies elsewhere (a video root the user named)."""
    return {"sample_id": sample_id, "dataset": dataset, "split": split,
            "video": None if clip is None else root.label(clip.path), "cache_key": None,
            "images": images, "conversations": conversations, "regions": regions, "meta": meta, CLIP: clip}


def image_extension(native: NativeRow, name: str, data: bytes, index: int = 0) -> tuple[bytes, str]:
    """(data, file extension) of an encoded image, checked to decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            kind = image.format
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise native.error(name, f"image {index} does not decode: {e}") from None
    if kind not in _IMAGE_EXTENSIONS:
        raise native.error(name, f"image {index} has unsupported format {kind}")
    return data, _IMAGE_EXTENSIONS[kind]


def store_image(media_dir: Path | None, dataset: str, data: bytes, extension: str) -> str:
    """Write an image under the cache root once (content-addressed); its path relative to that root.
    Every `images` entry a source adapter writes is such a path, so the student needs no dataset root.
    media_dir None: only the path (nothing is written)."""
    relative = IMAGES_DIR / dataset / f"{hashlib.sha256(data).hexdigest()}.{extension}"
    if media_dir is None:
        return relative.as_posix()
    store = Store(media_dir)  # the cache root: a directory or an object-store URL
    if not store.exists(relative):
        try:
            store.write_bytes(relative, data)
        except FileExistsError:
            pass  # the same bytes, written meanwhile by another row
    return relative.as_posix()
