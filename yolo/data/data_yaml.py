"""data.yaml: the dataset root, each split resolved to a sorted list of image files, and the class names."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from yolo.data.files import IMG_FORMATS, DataError, PathLike, is_image
from yolo.errors import classes_text
from yolo.fileio import yaml_error_text


@dataclass
class DataConfig:
    """A parsed data.yaml: the dataset root, resolved image lists per split and the class names."""

    yaml_path: Path
    root: Path
    train: list[Path]
    val: list[Path]
    names: list[str]
    test: list[Path] = field(default_factory=list)

    @property
    def nc(self) -> int:
        """Number of classes (always derived from `names`, so the two cannot disagree)."""
        return len(self.names)


def load_data_yaml(path: PathLike) -> DataConfig:
    """Read a YOLOv5 data.yaml and resolve every split to a sorted list of image files."""
    yaml_path = Path(os.path.abspath(Path(path).expanduser()))
    d = _read_yaml_mapping(yaml_path)
    root = _resolve_root(d.get("path"), yaml_path)
    names = _parse_names(d, yaml_path)
    splits = {}
    for key in ("train", "val"):
        if d.get(key) in (None, ""):
            raise DataError(f"{yaml_path}: missing '{key}' (expected a folder, a .txt list or a list of them)")
        splits[key] = _resolve_split(d[key], root, yaml_path, key)
    test = _resolve_split(d["test"], root, yaml_path, "test") if d.get("test") else []
    return DataConfig(yaml_path, root, splits["train"], splits["val"], names, test)


def _read_yaml_mapping(yaml_path: Path) -> dict:
    """Load the yaml file as a mapping, turning every failure into a one-line DataError."""
    if not yaml_path.is_file():
        raise DataError(f"{yaml_path}: data yaml not found")
    try:
        d = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(yaml_error_text(yaml_path, e)) from None
    except UnicodeDecodeError:
        raise DataError(f"{yaml_path}: not a UTF-8 text file") from None
    if not isinstance(d, dict):
        raise DataError(f"{yaml_path}: expected a mapping with path/train/val/names, got {type(d).__name__}")
    return d


def _resolve_root(path_value: Any, yaml_path: Path) -> Path:
    """`path:` is relative to the yaml's own folder (not the cwd), and defaults to that folder."""
    if path_value in (None, ""):
        return yaml_path.parent
    root = Path(str(path_value)).expanduser()
    if not root.is_absolute():
        root = yaml_path.parent / root
    root = Path(os.path.normpath(root))
    if not root.is_dir():
        raise DataError(f"{yaml_path}: path: dataset root {root} is not a folder")
    return root


def _parse_names(d: dict, yaml_path: Path) -> list[str]:
    """Accept names as a list or a {0: name, ...} dict; check it against nc when both are given."""
    names, nc = d.get("names"), d.get("nc")
    if names is None:
        if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
            raise DataError(f"{yaml_path}: missing 'names' (a list or a {{0: name}} mapping)")
        names = [f"class{i}" for i in range(nc)]
    elif isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{yaml_path}: names: keys must be integers 0..n-1") from None
        if keys != list(range(len(keys))):
            raise DataError(f"{yaml_path}: names: keys must be 0..{len(keys) - 1} without gaps, got {keys}")
        names = [str(names[k] if k in names else names[str(k)]) for k in keys]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise DataError(f"{yaml_path}: names: expected a list or a mapping, got {type(names).__name__}")
    if not names:
        raise DataError(f"{yaml_path}: names is empty")
    if nc is not None and nc != len(names):
        raise DataError(f"{yaml_path}: nc is {nc} but names lists {classes_text(len(names))}")
    return names


def _resolve_split(entry: Any, root: Path, yaml_path: Path, key: str) -> list[Path]:
    """Expand one split (folder, .txt list, image, glob, or a list of these) to sorted image files."""
    entries = entry if isinstance(entry, list) else [entry]
    files: list[Path] = []
    for e in entries:
        if not isinstance(e, (str, Path)):
            raise DataError(f"{yaml_path}: {key}: expected a path, got {e!r}")
        p = Path(str(e)).expanduser()
        p = p if p.is_absolute() else root / p
        if "*" in str(e):
            files += [Path(f) for f in glob.glob(str(p), recursive=True) if is_image(Path(f))]
        elif p.is_dir():
            files += _images_in_dir(p)
        elif p.is_file() and p.suffix.lower() == ".txt":
            files += _images_from_txt(p, root)
        elif p.is_file() and is_image(p):
            files.append(p)
        else:
            raise DataError(f"{yaml_path}: {key}: {p} does not exist (expected a folder of images or a .txt list)")
    files = sorted({Path(os.path.normpath(f)) for f in files}, key=str)
    if not files:
        raise DataError(f"{yaml_path}: {key}: no images ({' '.join(IMG_FORMATS)}) found in {entry}")
    return files


def _images_in_dir(folder: Path) -> list[Path]:
    """All images below a folder, recursively, as YOLOv5 globs `**/*.*`."""
    return [p for p in folder.rglob("*") if is_image(p) and p.is_file()]


def _images_from_txt(txt: Path, root: Path) -> list[Path]:
    """Image paths listed one per line; './x' is relative to the list's folder, other relative paths to root."""
    out = []
    for lineno, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("./"):
            p = txt.parent / s[2:]
        else:
            p = Path(s).expanduser()
            p = p if p.is_absolute() else root / p
        if not is_image(p):
            continue
        if not p.is_file():
            raise DataError(f"{txt}:{lineno}: listed image {p} does not exist")
        out.append(p)
    return out
