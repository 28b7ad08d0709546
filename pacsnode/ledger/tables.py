"""The ledger's schema: one SQLAlchemy Core table per thing it records.

Tables
    instances     one row per SOP Instance UID (unique: a repeat is never stored twice)
    series        one row per Series Instance UID, with the attributes routing needs
    units         the unit of work (a series, or a study when ``series.group_by = "study"``):
                  state, generation (incremented when a late instance reopens it), reason
    jobs          one row per (unit UID, model sha256): a re-run replaces, never duplicates;
                  ``starts`` counts every start and is never reset: the fencing token a
                  finish must still hold (a worker that lost the job finishes nothing)
    deliveries    one row per (job, destination, dataset file): pending → sent | failed;
                  ``failing_since`` is when its first attempt failed (the horizon counts from it)
    destinations  one row per destination the node has tried: up | down, since when and why

A ledger written by an older version opens as is: :func:`ensure_schema` creates the tables it
lacks and adds the columns it lacks (``ALTER TABLE ... ADD COLUMN``, each guarded by a look at
the table's columns first).
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.engine import Engine

__all__ = ["metadata", "instances", "series", "units", "jobs", "deliveries", "destinations",
           "ensure_schema"]

metadata = MetaData()

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sop_instance_uid", String(64), nullable=False, unique=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False, index=True),
    Column("study_uid", String(64), nullable=False),
    Column("unit_uid", String(64), nullable=False, index=True),
    Column("path", Text, nullable=False),
    Column("size", Integer, nullable=False),
    Column("transfer_syntax", String(64), nullable=False),
    Column("received_at", Float, nullable=False),
)

series = Table(
    "series",
    metadata,
    Column("series_uid", String(64), primary_key=True),
    Column("study_uid", String(64), nullable=False),
    Column("unit_uid", String(64), nullable=False, index=True),
    Column("modality", String(16), nullable=False, default=""),
    Column("series_description", Text, nullable=False, default=""),
    Column("body_part", String(64), nullable=False, default=""),
    Column("image_type", Text, nullable=False, default=""),
    Column("sop_class_uid", String(64), nullable=False, default=""),
    Column("series_number", Integer),
    Column("instance_count", Integer, nullable=False, default=0),
    Column("state", String(16), nullable=False),
    Column("generation", Integer, nullable=False, default=1),
    Column("reason", Text),
    Column("first_received_at", Float, nullable=False),
    Column("last_received_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

units = Table(
    "units",
    metadata,
    Column("uid", String(64), primary_key=True),
    Column("kind", String(8), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("generation", Integer, nullable=False, default=1),
    Column("instance_count", Integer, nullable=False, default=0),
    Column("route", String(128)),
    Column("reason", Text),
    Column("first_received_at", Float, nullable=False),
    Column("last_received_at", Float, nullable=False),
    Column("completed_at", Float),
    Column("updated_at", Float, nullable=False),
    Column("purged_at", Float),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("unit_uid", String(64), ForeignKey("units.uid"), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_sha256", String(64), nullable=False),
    Column("route", String(128), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("generation", Integer, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("starts", Integer, nullable=False, default=0),  # never reset: the fencing token
    Column("last_error", Text),
    Column("result_paths", Text, nullable=False, default="[]"),
    Column("next_attempt_at", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    UniqueConstraint("unit_uid", "model_sha256", name="uq_job_key"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("job_id", Integer, ForeignKey("jobs.id"), nullable=False, index=True),
    Column("destination", String(128), nullable=False),
    Column("dataset_path", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("next_attempt_at", Float),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("failing_since", Float),  # added after the first release: see ensure_schema
    UniqueConstraint("job_id", "destination", "dataset_path", name="uq_delivery"),
)

destinations = Table(
    "destinations",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("state", String(8), nullable=False),
    Column("since", Float, nullable=False),
    Column("last_error", Text),
    Column("last_ok_at", Float),
    Column("last_probe_at", Float),
    Column("updated_at", Float, nullable=False),
)

# Columns added to existing tables after the first release: (table, column, SQL type).
_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("deliveries", "failing_since", "FLOAT"),
    ("jobs", "starts", "INTEGER NOT NULL DEFAULT 0"),
)


def ensure_schema(engine: Engine) -> None:
    """Create missing tables, then add missing columns to tables an older version made."""
    metadata.create_all(engine)
    with engine.begin() as c:
        inspector = inspect(c)
        for table, column, sql_type in _ADDED_COLUMNS:
            have = {col["name"] for col in inspector.get_columns(table)}
            if column not in have:
                c.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
