"""The accelerator check (issue 19): one script for one GPU (about 8 minutes on an H100), the
same script at tiny sizes on a CPU (tests/test_gpu_check.py), so it is known to work before it
meets the device.

    python bench/gpu_check.py [--out=results.json] [--budget=420]      # on the GPU machine
    python bench/gpu_check.py --tiny                                     # on a CPU, seconds

It measures, at 256 px and batch 128 (the FF++ config's crop size):
  a. train-step images/s, JAX (float32, bfloat16 compute) against PyTorch on the same device in
     the same run (eager and torch.compile, NCHW and channels_last, float32 with TF32 tensor
     cores and bf16 autocast): EfficientNet-B0, EfficientNet-B4, Xception, ResNet-50 and the
     distillation step (EfficientNet-B4 teacher forward + EfficientNet-B0 student + DCT
     augmentation + KD, consistent teaching). PyTorch runs in bench/torch_worker.py, a
     separate process, one side at a time on the device.
  b. a training loop fed by the loader (grain, this process's rows, the FF++ config's host
     augmentations, PNG crops decoded on the host) against the same step fed one resident
     batch: end-to-end images/s, step-only images/s and the share of time the device waits for
     input. (Not `mkln train` itself: that needs TFDS and the rest, which the GPU machine does
     not have; this is its input path and step.)
  c. achieved FLOP/s against the device's datasheet peak (FLOPs per image from the CPU
     compilation of the same step: XLA's GPU cost analysis does not count cuDNN convolutions),
     and memory traffic against the peak bandwidth (XLA's "bytes accessed" of the GPU program,
     without cuDNN's own traffic: a lower bound).

Cases are run in order of importance and skipped once --budget seconds are spent, so a short
device lease still returns the most important figures. Everything printed is also written to
--out as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
import step_bench  # bench/step_bench.py: the step builder, timing and peaks

from mkln_jax import sharding

HERE = pathlib.Path(__file__).resolve().parent
# (student, teacher); the distillation step's teacher sees the student's view.
CASES = {
    "distill": ("efficientnet_b0", "efficientnet_b4"),
    "efficientnet_b4": ("efficientnet_b4", None),
    "efficientnet_b0": ("efficientnet_b0", None),
    "xception": ("xception", None),
    "resnet50": ("resnet50", None),
}
# GFLOP per image of one train step at 256 px (forward + backward + update; a multiply-add
# counts 2), from `python bench/gpu_check.py --count_flops` (XLA's cost analysis of the step
# compiled for a CPU; the count does not depend on the device; 2-core Zen 2, 2026-12-06).
FLOPS_PER_IMAGE_256: dict[str, float | None] = {
    "distill": 8.06,
    "efficientnet_b4": 12.89,
    "efficientnet_b0": 3.51,
    "xception": 36.83,
    "resnet50": 31.56,
}
# Peak memory bandwidth, TB/s (datasheets: H100 SXM, H200, A100 80GB).
GPU_BANDWIDTH = {"H100": 3.35, "H200": 4.8, "A100": 2.0}
TORCH_VARIANTS = (  # (precision, channels_last, mode); compile last: it is the slowest to start
    ("fp32", False, "eager"),
    ("fp32", True, "eager"),
    ("bf16", False, "eager"),
    ("bf16", True, "eager"),
    ("fp32", True, "compile"),
    ("bf16", True, "compile"),
)


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.perf_counter(), seconds

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def flops_per_image(name: str, size: int) -> float:
    student, teacher = CASES[name]
    if size == 256 and FLOPS_PER_IMAGE_256.get(name):
        return FLOPS_PER_IMAGE_256[name] * 1e9
    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        return step_bench.step_flops_here(student, teacher, 2, size) / 2


def jax_case(name: str, batch: int, size: int, dtype: str, steps: int) -> dict:
    student, teacher = CASES[name]
    start = time.perf_counter()
    compiled, args, _ = step_bench._build(
        student, teacher, batch, size, dtype, teacher_input="view"
    )
    compile_s = time.perf_counter() - start
    seconds = step_bench.measure(compiled, args, steps)
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    return {
        "compile_s": round(compile_s, 1),
        "ms_per_step": round(seconds * 1e3, 2),
        "images_per_s": round(batch / seconds, 1),
        "bytes_per_step": float((analysis or {}).get("bytes accessed", float("nan"))),
    }


class Torch:
    """bench/torch_worker.py in its own process, on this device."""

    def __init__(self, python: str):
        self.process = subprocess.Popen(
            [python, str(HERE / "torch_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, request: dict) -> list[float]:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the PyTorch worker stopped (see its stderr above)")
        return json.loads(line)["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(60)


def torch_python(requested: str) -> tuple[str, str]:
    """(a python with torch, torchvision and timm, or "", why not)."""
    python = requested or sys.executable
    probe = subprocess.run(
        [python, "-c", "import torch, torchvision, timm; print(torch.__version__)"],
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        return "", f"no torch / torchvision / timm in {python}"
    return python, probe.stdout.strip()


def e2e_case(name: str, batch: int, size: int, dtype: str, steps: int, threads, workers) -> dict:
    """The step fed by the loader against the same step fed one resident batch."""
    import cv2

    from mkln_jax.input_pipeline import loader

    student, teacher = CASES[name]
    compiled, args, _ = step_bench._build(
        student, teacher, batch, size, dtype, teacher_input="view"
    )
    step_only = step_bench.measure(compiled, args, steps)
    # PNG crops like a prepared dataset's: smooth faces-like gradients plus noise.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    pngs = []
    for k in range(64):
        base = np.stack([yy * (80 + k), xx * (120 - k), (yy + xx) * 60], -1) + 60
        image = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        pngs.append(cv2.imencode(".png", image)[1].tobytes())

    class PngSource:
        def __len__(self):
            return 4096

        def __getitem__(self, i):
            image = cv2.imdecode(np.frombuffer(pngs[i % len(pngs)], np.uint8), cv2.IMREAD_COLOR)
            return {"image": image[..., ::-1], "label": i % 2}

    ds = loader.train_batches(
        PngSource(),
        np.arange(4096),
        global_batch_size=batch,
        seed=0,
        augment=loader.HostAugment(hflip=True),  # the FF++ config's host augmentations
    )
    it = loader.iterate_from(ds, 0, threads, workers)
    mesh = sharding.make_mesh(1)
    state, frozen, _, hparams = args
    for _ in range(3):  # fill the prefetch buffers
        batch_data = sharding.host_to_global(next(it), mesh)
        state, _ = compiled(state, frozen, batch_data, hparams)
    jax.block_until_ready(state)
    waited, start = 0.0, time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        host = next(it)
        waited += time.perf_counter() - t0
        state, metrics = compiled(state, frozen, sharding.host_to_global(host, mesh), hparams)
    jax.block_until_ready(metrics["loss"])
    total = time.perf_counter() - start
    return {
        "end_to_end_images_per_s": round(steps * batch / total, 1),
        "step_only_images_per_s": round(batch / step_only, 1),
        "ratio": round((steps * batch / total) / (batch / step_only), 3),
        "input_wait_share": round(waited / total, 3),
        "host_cores": len(os.sched_getaffinity(0)),
        "reader_threads": threads,
        "reader_workers": workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true", help="CPU test sizes")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--torch_python", default="")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; then stop")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--out", default="")
    parser.add_argument("--count_flops", action="store_true", help="print FLOPS_PER_IMAGE_256")
    args = parser.parse_args()
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    if args.tiny:  # the same code paths with the small CNN: a minute on 2 CPU cores
        args.batch, args.size, args.steps = 4, 32, 2
        args.cases, args.dtypes = "small_cnn,distill", "float32"
        CASES["small_cnn"] = ("small_cnn", None)
        CASES["distill"] = ("small_cnn", "small_cnn")
    if args.count_flops:
        for name in CASES:
            print(f'    "{name}": {flops_per_image(name, args.size) / 1e9:.2f},', flush=True)
        return
    budget = Budget(args.budget)
    device = jax.devices()[0]
    kind = device.device_kind
    results: dict = {
        "device": f"{kind} ({device.platform})",
        "jax": jax.__version__,
        "batch": args.batch,
        "size": args.size,
        "steps": args.steps,
        "jax_steps": {},
        "torch_steps": {},
        "skipped": [],
    }
    print(f"{results['device']}, jax {jax.__version__}, batch {args.batch}, {args.size} px")
    cases = [c for c in args.cases.split(",") if c]
    dtypes = [d for d in args.dtypes.split(",") if d]
    peaks = {d: step_bench.device_peak(d) for d in dtypes}
    bandwidth = next((v for k, v in GPU_BANDWIDTH.items() if k in kind), float("nan")) * 1e12
    python, torch_version = torch_python(args.torch_python)
    results["torch"] = torch_version
    torch = Torch(python) if python and device.platform == "gpu" else None
    if python and device.platform != "gpu":
        results["torch"] = f"{torch_version} (not run: no GPU here)"

    # a + c: JAX then PyTorch per case, most important case first.
    print("\n| step | framework | variant | compile s | images/s | TFLOP/s | of peak | GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in cases:
        per_image = flops_per_image(name, args.size)
        for dtype in dtypes:
            if budget.left() < 30:
                results["skipped"].append(f"jax {name} {dtype}: budget")
                continue
            row = jax_case(name, args.batch, args.size, dtype, args.steps)
            achieved = per_image * row["images_per_s"]
            row["tflops"] = round(achieved / 1e12, 2)
            row["of_peak"] = round(achieved / peaks[dtype][0], 4)
            row["gbytes_per_s"] = round(row["bytes_per_step"] / (row["ms_per_step"] / 1e3) / 1e9, 1)
            row["of_bandwidth"] = round(row["gbytes_per_s"] * 1e9 / bandwidth, 4)
            results["jax_steps"][f"{name}/{dtype}"] = row
            print(
                f"| {name} | jax | {dtype} | {row['compile_s']} | {row['images_per_s']:.0f} | "
                f"{row['tflops']} | {row['of_peak']:.1%} | {row['gbytes_per_s']} |",
                flush=True,
            )
        for precision, channels_last, mode in TORCH_VARIANTS if torch else ():
            if (mode == "compile" and budget.left() < 120) or budget.left() < 30:
                results["skipped"].append(f"torch {name} {precision} {mode}: budget")
                continue
            teacher = CASES[name][1]
            request = {
                "case": "distill" if teacher else name,
                "teacher": teacher or "resnet18",
                "teacher_input": "view",
                "batch": args.batch,
                "size": args.size,
                "steps": args.steps,
                "mode": mode,
                "device": "cuda",
                "precision": precision,
                "channels_last": channels_last,
                "warmup": 5,
            }
            start = time.perf_counter()
            seconds = statistics.median(torch.run(request))
            variant = f"{precision} {'NHWC' if channels_last else 'NCHW'} {mode}"
            images = args.batch / seconds
            results["torch_steps"][f"{name}/{variant}"] = {
                "images_per_s": round(images, 1),
                "first_call_s": round(time.perf_counter() - start, 1),
                "tflops": round(per_image * images / 1e12, 2),
            }
            print(
                f"| {name} | torch | {variant} | - | {images:.0f} | "
                f"{per_image * images / 1e12:.2f} | - | - |",
                flush=True,
            )
    if torch:
        torch.close()

    # b: the loader feeding the distillation step (grain: carry its wheels where it is missing).
    try:
        import grain  # noqa: F401

        missing = ""
    except ImportError:
        missing = "grain is not installed (pip install --no-deps grain array_record portpicker)"
    if missing or budget.left() < 45 or "distill" not in cases:
        results["skipped"].append(f"end to end: {missing or 'budget, or no distill case'}")
    else:
        dtype = dtypes[-1]
        results["end_to_end"] = e2e_case(
            "distill", args.batch, args.size, dtype, max(args.steps, 3), args.threads, args.workers
        )
        results["end_to_end"]["dtype"] = dtype
        e2e = results["end_to_end"]
        print(
            f"\nend to end (distill, {dtype}, loader with {args.threads} threads, "
            f"{args.workers} workers, {e2e['host_cores']} host cores): "
            f"{e2e['end_to_end_images_per_s']:.0f} images/s against "
            f"{e2e['step_only_images_per_s']:.0f} step-only ({e2e['ratio']:.0%}); the device "
            f"waited for input {e2e['input_wait_share']:.0%} of the time"
        )
    for item in results["skipped"]:
        print(f"skipped: {item}")
    print(f"\n{budget.seconds - budget.left():.0f} s in all")
    if args.out:
        text = io.StringIO()
        json.dump(results, text, indent=2)
        pathlib.Path(args.out).write_text(text.getvalue())


if __name__ == "__main__":
    main()
