"""Small dataset roots laid out exactly as each dataset is published (pipeline/datasets/*.py and the
README's Datasets section give the facts and their sources), with each release's quirks: RoboFAC's
early task names, SAT's Image structs and identical rows, VSTI-Bench's erratum ids, Wolf's Pexels
objects and scene index, STI-Bench's repeated IDs, JSON-string and struct candidates, VLM4D's URLs,
integer choices and repeated ids. The videos are synthetic scenes of the project's generator (their
ground truth beside them, for the oracle teacher): 16 frames at 10 fps, 1.6 s."""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

HF_VLM4D = "https://huggingface.co/datasets/shijiezhou/VLM4D/resolve/main/"


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def place(synthetic_set: Path, scene: str, dst: Path) -> Path:
    """A synthetic scene's video under a dataset's own name, its ground truth beside it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(synthetic_set / "videos" / f"{scene}.mp4", dst)
    shutil.copy(synthetic_set / "videos" / f"{scene}.gt.npz", dst.with_name(dst.stem + ".gt.npz"))
    return dst


def png_bytes(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def turns(question: str, answer: str, answerer: str = "gpt") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": answerer, "value": answer}]


def robofac(root: Path, synthetic_set: Path | None) -> Path:
    """training_qa.json (no ids; `video` relative to simulation_data/; early task names in the first
    part), the videos under their current names; realworld_data/ and test_qa_sim/ are not read."""
    write_json(root / "training_qa.json", [
        {"video": "Rotation-v1/scene_a/0b7c.mp4",
         "conversations": turns("<video>\nWhy did the stacking fail?", "The cube slipped.", "assistant")},
        {"video": "dataset_success_cleaned/PickCube/9f2e.mp4",
         "conversations": turns("What is the task?", "Pick up the cube.")},
        # Published twice, identically: both kept, under two ids.
        {"video": "dataset_success_cleaned/PickCube/9f2e.mp4",
         "conversations": turns("What is the task?", "Pick up the cube.")},
    ])
    (root / "realworld_data").mkdir(parents=True)
    write_json(root / "test_qa_sim" / "test.json", {})
    if synthetic_set is not None:
        place(synthetic_set, "scene_0000", root / "simulation_data" / "SpinStack-v1" / "scene_a" / "0b7c.mp4")
        place(synthetic_set, "scene_0001", root / "simulation_data" / "success_data" / "PickCube" / "9f2e.mp4")
    return root


SAT_ROW = {"question": "Is the chair left of the table?", "answers": ["yes", "no"], "question_type": "obj_rel",
           "correct_answer": "no"}


def sat(root: Path) -> Path:
    """SAT_<split>.parquet: train with Image structs {bytes, path} and two identical rows, val with raw
    bytes, static and test."""
    root.mkdir(parents=True)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image_bytes", pa.list_(struct)), ("question", pa.string()),
                        ("answers", pa.list_(pa.string())), ("question_type", pa.string()),
                        ("correct_answer", pa.string())])
    two = {**SAT_ROW, "image_bytes": [{"bytes": png_bytes(1), "path": None}, {"bytes": png_bytes(0), "path": "b.png"}],
           "question": "Did the camera turn left?", "answers": ["left", "right", "no turn"],
           "correct_answer": "right", "question_type": "ego_movement"}
    one = {**SAT_ROW, "image_bytes": [{"bytes": png_bytes(0), "path": None}]}
    pq.write_table(pa.Table.from_pylist([one, two, one], schema=schema), root / "SAT_train.parquet")
    pq.write_table(pa.Table.from_pylist([{**SAT_ROW, "image_bytes": [png_bytes(2)]}]), root / "SAT_val.parquet")
    pq.write_table(pa.Table.from_pylist([{**SAT_ROW, "image_bytes": [png_bytes(3)]}]), root / "SAT_static.parquet")
    pq.write_table(pa.Table.from_pylist([{**SAT_ROW, "image_bytes": [png_bytes(4)]}]), root / "SAT_test.parquet")
    return root


def vsti(root: Path, synthetic_set: Path, videos: Path | None = None) -> Path:
    """VLM-3R-DATA: vstibench_train/qa_*.json (LLaVA rows) and the erratum's dropped ids; the ScanNet
    video at <videos>/scannet/videos/<scene>.mp4 (videos: the root unless given)."""
    train = root / "vstibench_train"
    row = {"data_source": "scannet", "scene_name": "scene0000_00", "video": "scannet/videos/scene0000_00.mp4"}
    write_json(train / "qa_camera_displacement.json", [
        {**row, "id": "5b1e", "question_type": "camera_displacement",
         "conversations": turns("<image>\nHow far did the camera move from frame 1 to frame 9 (in meters)?", "1.3")},
        {**row, "id": "dead", "question_type": "camera_displacement",
         "conversations": turns("<image>\nHow far did the camera move from frame 2 to frame 9 (in meters)?", "9.9")},
    ])
    write_json(train / "qa_camera_movement_direction.json", [
        {**row, "id": "77aa", "question_type": "camera_movement_direction",
         "conversations": turns("<image>\nWhich way does the camera move?\nA. left\nB. right\nC. up\nD. down", "B")},
    ])
    write_json(train / "erratum_dropped_items.json", [
        {"file": "qa_camera_displacement", "id": "dead", "scene_name": "scene0000_00", "drop_reason": "out_of_range"}])
    place(synthetic_set, "scene_0002", (videos or root) / "scannet" / "videos" / "scene0000_00.mp4")
    return root


def vsti_test(root: Path, synthetic_set: Path) -> Path:
    """Journey9ni/vstibench: test rows with video_path relative to the root."""
    row = {"dataset": "scannet", "scene_name": "scene0001_00", "video_path": "scannet/videos/scene0001_00.mp4",
           "frame_indices": [3, 9]}
    lines = [
        {**row, "question": "Which way does the camera move?", "question_type": "camera_movement_direction",
         "options": ["A. left", "B. right", "C. up", "D. down"], "mc_answer": "A", "ground_truth": "left"},
        {**row, "question": "How far did the camera move (m)?", "question_type": "camera_displacement",
         "options": None, "mc_answer": None, "ground_truth": 2.5},
    ]
    root.mkdir(parents=True)
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    place(synthetic_set, "scene_0003", root / "scannet" / "videos" / "scene0001_00.mp4")
    return root


def wolf(root: Path, synthetic_set: Path) -> Path:
    """annotations/ as in NVlabs/Wolf: the two nuScenes caption files, robotics and Pexels (values
    objects) and the clip index; one nuScenes clip cut and named, one to cut from its scene video."""
    ann = root / "annotations"
    write_json(ann / "Normal Nuscenes_annotations.json", {"c36e.mp4": "A car drives past a parked truck."})
    write_json(ann / "Interactive Nuscenes_annotations.json", {"fcd3.mp4": "The ego car yields to a pedestrian."})
    write_json(ann / "robotics_annotations.json", {"57f5.mp4": "A robot arm places an apple in a bowl."})
    write_json(ann / "Pexels_annotations.json", {"Llo6.mp4": {"output": "A man drives a blue car.", "tags": ["car"]}})
    write_json(ann / "wolf_driving_index_file.json", {
        "c36e.mp4": {"scene_id": "scene-0001", "frame_id": "c36e", "ts": 0, "te": 3},
        "fcd3.mp4": {"scene_id": "scene-0001", "frame_id": "fcd3", "ts": 1, "te": 3}})
    place(synthetic_set, "scene_0000", root / "videos" / "c36e.mp4")
    place(synthetic_set, "scene_0001", root / "scenes" / "scene-0001.mp4")
    place(synthetic_set, "scene_0002", root / "videos" / "57f5.mp4")
    place(synthetic_set, "scene_0003", root / "videos" / "Llo6.mp4")
    return root


def stibench(root: Path, synthetic_set: Path) -> Path:
    """qa.parquet (ID 1 under two videos; one video asked about two spans; Candidates as JSON strings)
    and the videos unzipped to video/ (the name one official script uses)."""
    root.mkdir(parents=True)
    base = {"Question": "How far did the car travel?", "Answer": "B", "Task": "Displacement & Path Length",
            "Source": "waymo", "Scene": "outdoor"}
    options = json.dumps({"A": "1 m", "B": "5 m", "C": "10 m"})
    pq.write_table(pa.Table.from_pylist([
        {**base, "Video": "a.mp4", "ID": 1, "Candidates": options, "time_start": 0.0, "time_end": 0.7},
        {**base, "Video": "a.mp4", "ID": 2, "Candidates": options, "time_start": 0.8, "time_end": 1.5,
         "Question": "How far did the car travel next?", "Answer": "C"},
        {**base, "Video": "b.mp4", "ID": 1, "Candidates": options, "time_start": 0.0, "time_end": 1.5},
    ]), root / "qa.parquet")
    place(synthetic_set, "scene_0000", root / "video" / "a.mp4")
    place(synthetic_set, "scene_0001", root / "video" / "b.mp4")
    return root


def vlm4d(root: Path, synthetic_set: Path) -> Path:
    """data/real_mc.json and data/synthetic_mc.json as in the GitHub repository (`video` a Hugging Face
    URL; integer choices; id validation_1 in both files), the videos downloaded into the root."""
    write_json(root / "data" / "real_mc.json", [
        {"id": "validation_1", "video": HF_VLM4D + "videos_real/davis/aerobatics.mp4",
         "question_type": "multiple-choice", "question": "What direction is the plane moving towards?",
         "choices": {"A": "not moving", "B": "left", "C": "right", "D": "up"}, "answer": "right"},
        {"id": "validation_3", "video": HF_VLM4D + "videos_real/davis/baseball.mp4",
         "question_type": "multiple-choice", "question": "How many times does the batter hit the ball?",
         "choices": {"A": 1, "B": 2, "C": 3, "D": 0}, "answer": 2},
    ])
    write_json(root / "data" / "synthetic_mc.json", [
        {"id": "validation_1", "video": HF_VLM4D + "videos_synthetic/synth_001.mp4",
         "question_type": "multiple-choice", "question": "Which direction is the robotic arm moving?",
         "choices": {"A": "left", "B": "no robotic arm there", "C": "not moving", "D": "right"}, "answer": "left"},
    ])
    place(synthetic_set, "scene_0001", root / "videos_real" / "davis" / "aerobatics.mp4")
    place(synthetic_set, "scene_0002", root / "videos_real" / "davis" / "baseball.mp4")
    place(synthetic_set, "scene_0003", root / "videos_synthetic" / "synth_001.mp4")
    return root


def r4d(root: Path, synthetic_set: Path) -> Path:
    """test.json with Set-of-Marks pictures, media paths relative to the root."""
    write_json(root / "test.json", [
        {"id": "r4d-1", "benchmark": "vlm4d", "task": "Speed & Acceleration", "video": "videos/r1.mp4",
         "som_image": "som/r1.jpg", "question": "Is <obj_1> moving faster than <obj_2>?",
         "options": ["yes", "no", "same", "unknown"], "answer": "no"},
    ])
    (root / "som").mkdir()
    Image.fromarray(np.full((12, 16, 3), 200, np.uint8)).save(root / "som" / "r1.jpg", format="JPEG")
    place(synthetic_set, "scene_0000", root / "videos" / "r1.mp4")
    return root
