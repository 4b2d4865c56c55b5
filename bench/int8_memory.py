"""How much memory does `export --int8` need? Peak resident memory (VmHWM) of ONNX Runtime's static int8
calibration of yolov5n at 640 on 32 coco128 train images, all images in one calibration pass (as before) against
passes of `reports.quantize.CALIB_CHUNK` images, and the mAP each int8 model keeps on coco128 val.

    python bench/int8_memory.py            # bench/results/int8_memory.json / .md

Each variant is quantized in a child process of its own, so its VmHWM is its own peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, markdown_table, need_shared, write_result

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
import reports.quantize as q
from reports.quantize import Int8Config, quantize_int8
from yolo.data import load_data_yaml
q.CALIB_CHUNK = {chunk}
imgs = list(load_data_yaml({data!r}).train)[:{n}]
t = time.perf_counter()
quantize_int8({src!r}, {dst!r}, imgs, Int8Config("u8", "percentile", {n}))
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({{"vmhwm_mib": hwm // 1024, "seconds": round(time.perf_counter() - t, 1)}}))
"""


def quantize_in_child(src: Path, dst: Path, data: Path, n: int, chunk: int) -> dict:
    code = CHILD.format(repo=str(REPO), chunk=chunk, data=str(data), n=n, src=str(src), dst=str(dst))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32, help="calibration images (default 32, the export default)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = ap.parse_args(argv)
    shared = need_shared()
    from reports.export import export_onnx
    from reports.onnx_backend import OnnxDetector
    from reports.quantize import CALIB_CHUNK
    from yolo.checkpoint import load_model
    from yolo.val import evaluate

    data = shared / "datasets" / "coco128" / "coco128.yaml"
    rows, figures = [], {"images": args.images, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="int8-memory-") as tmp:
        model, meta = load_model(shared / "weights" / "yolov5n.pt")
        src = export_onnx(model, Path(tmp) / "yolov5n.onnx", 640, metadata=meta)
        fp32 = evaluate(OnnxDetector(src), data, imgsz=640, progress=False)["map"]
        for name, chunk in (("one pass (before)", args.images), (f"passes of {CALIB_CHUNK} (now)", CALIB_CHUNK)):
            dst = Path(tmp) / f"int8_{chunk}.onnx"
            res = quantize_in_child(src, dst, data, args.images, chunk)
            res["map"] = evaluate(OnnxDetector(dst), data, imgsz=640, progress=False)["map"]
            figures["variants"][name] = {"chunk": chunk, **res}
            rows.append([name, res["vmhwm_mib"], res["seconds"], f"{res['map']:.4f}", f"{fp32 - res['map']:+.4f}"])
            print(name, res, flush=True)
    figures["fp32_map"] = fp32
    table = markdown_table(["calibration", "peak resident MiB", "seconds", "int8 mAP50-95", "loss vs fp32"], rows)
    title = (f"### int8 export memory: yolov5n at 640, {args.images} coco128 train images, u8 percentile "
             f"(fp32 mAP50-95 {fp32:.4f} on coco128 val)")
    write_result("int8_memory", figures, f"{title}\n\n{table}", out_dir=args.out)


if __name__ == "__main__":
    main()
