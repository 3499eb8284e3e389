"""What every dataset adapter shares: row errors that name the file, the row and the field; typed
field readers; the strict / lenient row loop; media paths confined to the dataset root; and the
multiple-choice prompt layout the evaluators score.

An adapter turns one dataset's native annotation files into rows of manifests.schemas.SAMPLES_SCHEMA
whose `video` is relative to the dataset root. Native field names drift between releases, so every
field is read through these helpers and a malformed row never passes silently: strict mode raises
RowError, lenient mode records the row as skipped (file, row, field, reason) for summary.json.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from manifests.regions import check_marks
from pipeline.sources import resolve_inside
from shards.atomic import atomic_write_bytes

LETTERS = "ABCDEFGHIJ"
IMAGES_DIR = Path("images")  # under the cache root: images/<dataset>/<sha256>.<ext>
_IMAGE_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
ANSWER_FORMAT = "Answer with the option's letter."
# Some releases write options as "A. text" or "(A) text"; the letter is ours to assign.
_LETTER_PREFIX = re.compile(r"^\s*\(?([A-J])[.):]\s+")


class RowError(ValueError):
    """A malformed annotation row: where it is and which field is wrong."""

    def __init__(self, file: Path | str, row: int | str, field_name: str, reason: str):
        self.file, self.row, self.field, self.reason = str(file), row, field_name, reason
        super().__init__(f"{file}: row {row}: field {field_name!r}: {reason}")

    def as_record(self) -> dict:
        return {"file": self.file, "row": self.row, "field": self.field, "reason": self.reason}


@dataclass
class AdapterResult:
    """A dataset's sample rows (video relative to `root`) and the rows skipped in lenient mode."""

    dataset: str
    root: Path
    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)


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

    def media(self, root: Path, name: str, *, relative_to: str = "") -> str:
        """A media path of the row, relative to `root`, refused if it escapes it (absolute paths
        and `..` included); the file itself may be missing (it then becomes a failed clip row)."""
        value = self.text(name)
        if Path(value).is_absolute():
            # Checked before joining: "videos/" + "/etc/passwd" would quietly become a path inside the root.
            raise self.error(name, f"path {value!r} escapes the dataset root {root}: media paths are relative")
        relative = f"{relative_to}/{value}" if relative_to else value
        try:
            path = resolve_inside(root, relative, f"{self.file}: row {self.index}: field {name!r}")
        except ValueError:
            raise self.error(name, f"path {value!r} escapes the dataset root {root}") from None
        return path.relative_to(root.resolve()).as_posix()


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
    """Rows of a Parquet file, streamed in batches (SAT's train split holds ~175k rows with images)."""
    parquet = pq.ParquetFile(path)
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
               video: str | None = None, images: list[str] | None = None, regions: list[dict] | None = None) -> dict:
    return {"sample_id": sample_id, "dataset": dataset, "split": split, "video": video, "cache_key": None,
            "images": images, "conversations": conversations, "regions": regions, "meta": meta}


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


def store_image(media_dir: Path, dataset: str, data: bytes, extension: str) -> str:
    """Write an image under the cache root once (content-addressed); its path relative to that root.
    Every `images` entry a source adapter writes is such a path, so the student needs no dataset root."""
    relative = IMAGES_DIR / dataset / f"{hashlib.sha256(data).hexdigest()}.{extension}"
    path = Path(media_dir) / relative
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write_bytes(path, data)
        except FileExistsError:
            pass  # the same bytes, written meanwhile by another row
    return relative.as_posix()
