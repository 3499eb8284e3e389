"""Teacher name -> implementation. Imported lazily so the driver never imports torch models it
does not need."""
from __future__ import annotations

from pipeline.config import TeacherConfig
from pipeline.teachers.base import Teacher, TeacherIdentity


def teacher_class(name: str) -> type[Teacher]:
    if name == "oracle":
        from pipeline.teachers.oracle import OracleTeacher

        return OracleTeacher
    if name == "l4p":
        from pipeline.teachers.l4p.teacher import L4PTeacher

        return L4PTeacher
    if name == "l4p-tiny":
        from pipeline.teachers.l4p.teacher import L4PTinyTeacher

        return L4PTinyTeacher
    raise ValueError(f"unknown teacher {name!r}")


def teacher_identity(config: TeacherConfig, num_frames: int) -> TeacherIdentity:
    return teacher_class(config.name).identity(config, num_frames)


def build_teacher(config: TeacherConfig) -> Teacher:
    return teacher_class(config.name)(config)
