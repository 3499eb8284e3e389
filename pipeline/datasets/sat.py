"""SAT (spatial aptitude training, images only; Hugging Face array/SAT): the root holds
`SAT_train.parquet`, `SAT_static.parquet`, `SAT_val.parquet` and `SAT_test.parquet`; the split is the
file name without `SAT_`. Columns: `image_bytes` (a list of images, each raw encoded bytes or an
Image struct {bytes, path}), `question`, `answers` (option texts), `question_type`, `correct_answer`
(the option TEXT). There is no id column and identical rows exist, so a row is named by its split
and row number. Image-only samples: no teacher pass, SFT loss only.

The encoded images are written out once, content-addressed, as files under the cache directory
(`images/sat/<sha256>.<ext>`, common.store_image), and a sample's `images` holds those paths relative
to the cache root: the student reads plain image files next to the shards it already reads, needs neither the
dataset's Parquet nor its row order, and two rows with the same picture share one file.
`SAT_train.parquet` is one ~5 GB row group: it is streamed in record batches (common.parquet_records).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.datasets.common import (
    AdapterResult, MediaRoot, NativeRow, answer_letter, checked_marks, choice_meta, collect, image_extension,
    multiple_choice, option_texts, parquet_records, sample_row,
)

NAME = "sat"
PATTERN = "SAT_*.parquet"
OPTIONS: dict[str, str] = {}
COLUMNS = ["image_bytes", "question", "answers", "question_type", "correct_answer"]


def split_of(path: Path) -> str:
    """SAT_train.parquet -> train."""
    return path.stem.removeprefix("SAT_")


def encoded_images(native: NativeRow, name: str) -> list[bytes]:
    """The row's encoded images (bytes; each checked to decode when stored)."""
    value = native.get(name, list)
    if not value:
        raise native.error(name, "no image")
    images = []
    for i, item in enumerate(value):
        # datasets' Image feature stores {"bytes": ..., "path": ...}; older dumps store raw bytes.
        data = item.get("bytes") if isinstance(item, dict) else item
        if not isinstance(data, bytes) or not data:
            raise native.error(name, f"image {i} is not encoded image bytes: {type(data).__name__}")
        images.append(data)
    return images


def read(root: Path, lenient: bool = False, media_dir: Path | None = None) -> AdapterResult:
    root = Path(root)
    files = sorted(root.glob(PATTERN))
    if not files:
        raise FileNotFoundError(f"{root}: no SAT split ({PATTERN}) at the top of the dataset root")
    result = AdapterResult(NAME, root, media_dir)
    top = MediaRoot(root)
    for path in files:
        split = split_of(path)

        def convert(native: NativeRow, split=split) -> dict:
            images = [image_extension(native, "image_bytes", data, i)
                      for i, data in enumerate(encoded_images(native, "image_bytes"))]
            options = option_texts(native, "answers", native.get("answers", (list, str)))
            answer = answer_letter(native, "correct_answer", options, by_text=True)
            question = native.text("question")
            tokens = "\n".join("<image>" for _ in images)
            conversations = multiple_choice(tokens, question, options, answer)
            checked_marks(native, "question", conversations, None)
            meta = choice_meta(options, answer, question_type=native.text("question_type", optional=True),
                               source_file=path.name)
            # Images are written only once the row is known to be good: a skipped row leaves no file.
            stored = [result.store_image(data, ext) for data, ext in images]
            return sample_row(sample_id=f"{NAME}/{split}/{native.index}", dataset=NAME, split=split, root=top,
                              images=stored, conversations=conversations, meta=meta)

        collect(result, parquet_records(path, COLUMNS), convert, lenient)
    return result
