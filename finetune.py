"""Fine-tune / sparse-train a YOLOv5 detector: `python finetune.py --weights yolov5n.pt --data data.yaml`.

Argument parsing only; the training engine is `finetune.trainer.train`.
"""

import sys

from finetune.cli import main

if __name__ == "__main__":
    sys.exit(main())
