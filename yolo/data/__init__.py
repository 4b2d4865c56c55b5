"""Detection data: data.yaml, YOLO label files, image loading, letterbox, augmentation and loaders.

Bad input never crashes deep inside a worker: data.yaml problems raise `DataError` (one line naming the
file), bad label rows are skipped or clipped and listed in `LabelReport`, unreadable images are dropped
and recorded, and every loader says what was dropped (or refuses it under --strict; yolo.data.check).
Nothing is ever written next to the data (no `.cache` files).

Modules, in the order data flows through them: `files` (image suffixes, label paths, DataError), `data_yaml`
(load_data_yaml), `labels` (label rows), `images` (decoding, letterbox), `augment` (training warps and
colour), `cache` (decoded images in memory), `dataset` (DetectionDataset, whose scan builds the LabelReport),
`check` (saying that report once per split, or refusing it under --strict), `loader` (create_dataloader).
Every public name is importable from `yolo.data` itself.
"""

from yolo.data.augment import augment_hsv, box_candidates, mixup, random_perspective
from yolo.data.cache import AUTO_CACHE_BYTES, CACHE_MODES, PackedImages
from yolo.data.check import check_splits, data_checks, settle_report
from yolo.data.data_yaml import DataConfig, load_data_yaml
from yolo.data.dataset import RECT_BATCHES, DetectionDataset
from yolo.data.files import IMG_FORMATS, DataError, PathLike, img2label_path
from yolo.data.images import MIN_IMAGE_SIDE, PAD_COLOR, image_size, letterbox, load_image
from yolo.data.labels import EDGE_TOLERANCE, ROUNDING_TOLERANCE, LabelIssue, LabelReport, read_label_file
from yolo.data.loader import create_dataloader, leave_stop_signals_to_main, worker_start_method

__all__ = [
    "AUTO_CACHE_BYTES",
    "CACHE_MODES",
    "EDGE_TOLERANCE",
    "IMG_FORMATS",
    "MIN_IMAGE_SIDE",
    "PAD_COLOR",
    "RECT_BATCHES",
    "ROUNDING_TOLERANCE",
    "DataConfig",
    "DataError",
    "DetectionDataset",
    "LabelIssue",
    "LabelReport",
    "PackedImages",
    "PathLike",
    "augment_hsv",
    "box_candidates",
    "check_splits",
    "create_dataloader",
    "data_checks",
    "image_size",
    "img2label_path",
    "leave_stop_signals_to_main",
    "letterbox",
    "load_data_yaml",
    "load_image",
    "mixup",
    "random_perspective",
    "read_label_file",
    "settle_report",
    "worker_start_method",
]
