"""Which pipeline stages are finished, with which inputs: lets a re-run skip, resume or redo stages."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from yolo.errors import deferred_interrupts
from yolo.fileio import atomic_write_text, file_sha256, increment_run_dir

STATE_FILE = "pipeline.json"


def stage_key(params: dict[str, Any], upstream: str = "") -> str:
    """A stage's identity: its own parameters plus the key of the stage it consumes.

    Chaining the upstream key means a change early in the pipeline invalidates everything after it.
    """
    blob = json.dumps({"params": params, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_id(path: str | None) -> str | None:
    """A file's identity for stage keys: path, size and a hash of its bytes. Not the modification time: copying,
    re-mounting or touching a dataset must not redo an hour of training, while any edit of the bytes does."""
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        return str(path)
    return f"{p.resolve()}:{p.stat().st_size}:{file_sha256(p)[:16]}"


def resolve_run_dir(project: str, name: str, new: bool = False) -> Path:
    """Re-use project/name when it holds a pipeline (so re-running resumes it); --new makes exp2, exp3, ..."""
    base = Path(project) / name
    if not new and (base / "pipeline.json").is_file():
        return base
    if not new and not base.exists():
        base.mkdir(parents=True)
        return base
    return increment_run_dir(project, name, exist_ok=False)


@dataclass
class StageRecord:
    name: str
    key: str
    status: str = "running"  # running | done
    outputs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0  # when the current (or last) attempt started
    seconds: float = 0.0  # wall time summed over attempts: finished, failed or Ctrl-C'd ones (not a SIGKILLed one)
    attempts: int = 0


class PipelineState:
    """pipeline.json in the run folder, rewritten atomically after every change."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / STATE_FILE
        self.stages: dict[str, StageRecord] = {}
        if self.path.is_file():
            raw = json.loads(self.path.read_text())
            self.stages = {k: StageRecord(**v) for k, v in raw.get("stages", {}).items()}

    def save(self) -> None:
        data = {"schema": "yolov5-slim.pipeline/1", "stages": {k: asdict(v) for k, v in self.stages.items()}}
        atomic_write_text(self.path, json.dumps(data, indent=2, default=str))

    def status(self, name: str, key: str) -> str:
        """'done' (skip), 'resume' (same inputs, interrupted), 'changed' (inputs differ: redo) or 'new'."""
        rec = self.stages.get(name)
        if rec is None:
            return "new"
        if rec.key != key:
            return "changed"
        return "done" if rec.status == "done" else "resume"

    def begin(self, name: str, key: str, params: dict[str, Any]) -> None:
        rec = self.stages.get(name)
        if rec is None or rec.key != key:
            rec = self.stages[name] = StageRecord(name=name, key=key, params=params)
        rec.status, rec.started = "running", time.time()
        rec.attempts += 1
        self.save()

    def stop(self, name: str) -> None:
        """Bank the time of an attempt that ended in an error or Ctrl-C, so a resumed stage reports its whole cost."""
        self._add_attempt_time(self.stages[name])
        self.save()

    def finish(self, name: str, outputs: dict[str, Any]) -> None:
        with deferred_interrupts():  # a stage that finished is recorded as done even if a signal comes in now
            rec = self.stages[name]
            rec.status, rec.outputs = "done", outputs
            self._add_attempt_time(rec)
            self.save()

    @staticmethod
    def _add_attempt_time(rec: StageRecord) -> None:
        rec.seconds = round(rec.seconds + time.time() - rec.started, 1)

    def outputs(self, name: str) -> dict[str, Any]:
        return self.stages[name].outputs
