"""The accelerator check (issue 19): one script for one GPU (about 8 minutes on an H100), the
same script at tiny sizes on a CPU (tests/test_gpu_check.py), so it is known to work before it
meets the device.

    python bench/gpu_check.py --wheels=build/gpu_wheels [--out=results.json] [--budget=420]
    python bench/gpu_check.py --tiny                                     # on a CPU, seconds

It measures, at 256 px and batch 128 (the FF++ config's crop size):
  a. train-step images/s, JAX (float32, bfloat16 compute) against PyTorch on the same device in
     the same run (eager and torch.compile, NCHW and channels_last, float32 with TF32 tensor
     cores and bf16 autocast): EfficientNet-B0, EfficientNet-B4, Xception, ResNet-50 and the
     distillation step (EfficientNet-B4 teacher forward + EfficientNet-B0 student + DCT
     augmentation + KD, consistent teaching). PyTorch runs in bench/torch_worker.py, a
     separate process, one side at a time on the device.
  b. `mkln train` end to end (train.train_and_evaluate in this process) with the FF++ config's
     models, host augmentations and distillation, on a dataset written there in the forgery
     builders' format (256 px PNG crops, made on the machine: it has no network), against the
     same config's student step fed one resident batch: end-to-end images/s, step-only
     images/s, and the share of time the device had no step to run (train/device_idle_share).
     The machine lacks grain, TFDS and the rest: `python bench/gpu_wheels.py` puts their wheels
     in build/gpu_wheels (carried with the run), and --wheels installs the missing ones.
  c. achieved FLOP/s against the device's datasheet peak (FLOPs per image from the CPU
     compilation of the same step: XLA's GPU cost analysis does not count cuDNN convolutions),
     and memory traffic against the peak bandwidth (XLA's "bytes accessed" of the GPU program,
     without cuDNN's own traffic: a lower bound).

Cases are run in order of importance (the distillation step in JAX, `mkln train` end to end,
PyTorch eager, then torch.compile and the single models), each capped at --case_cap seconds
(a PyTorch case past it is stopped and its worker restarted) and skipped once --budget seconds
are spent, so a short device lease still returns the most important figures. The JSON (--out,
default $OUT/gpu_check.json) is rewritten after every case, so a run cut short keeps what it
measured. XLA's persistent compilation cache is on (as in `mkln`), so a rerun on the same
machine compiles nothing again.
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

# JAX would take 75% of the device's memory at start; the PyTorch worker shares the device.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import numpy as np
import step_bench  # bench/step_bench.py: the step builder, timing and peaks

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


def jax_case(name: str, batch: int, size: int, dtype: str, steps: int, cap: float) -> dict:
    student, teacher = CASES[name]
    start = time.perf_counter()
    compiled, args, _ = step_bench._build(
        student, teacher, batch, size, dtype, teacher_input="view"
    )
    compile_s = time.perf_counter() - start
    seconds = step_bench.measure(compiled, args, steps, max_seconds=cap)
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):
        analysis = analysis[0] if analysis else {}
    return {  # unrounded: the printed table rounds
        "compile_s": compile_s,
        "ms_per_step": seconds * 1e3,
        "images_per_s": batch / seconds,
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

    def run(self, request: dict, cap: float) -> list[float] | None:
        """The request's step times, or None when it ran past `cap` seconds (the worker is then
        stopped and started again for the next request)."""
        import select

        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], cap)
        if not ready:
            python = self.process.args[0]
            self.process.kill()
            self.process.wait()
            self.__init__(python)
            return None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the PyTorch worker stopped (see its stderr above)")
        return json.loads(line)["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(60)


def torch_python(requested: str) -> tuple[str, str]:
    """(a python with torch, torchvision and timm, or "", which of them it lacks)."""
    python = requested or sys.executable
    probe = subprocess.run(
        [
            python,
            "-c",
            "import importlib.util as u; print(*[m for m in ('torch', 'torchvision', 'timm') "
            "if u.find_spec(m) is None])",
        ],
        capture_output=True,
        text=True,
    )
    missing = probe.stdout.split() if probe.returncode == 0 else ["python"]
    if missing:
        return "", f"{python} lacks {', '.join(missing)}: the PyTorch comparison is skipped"
    version = subprocess.run(
        [python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    )
    return python, version.stdout.strip()


def install_wheels(directory: str) -> list[str]:
    """Unpacks the wheels in `directory` (made by bench/gpu_wheels.py) whose distributions
    this Python lacks into a fresh folder at the end of sys.path; returns their names. What is
    installed already is left as it is. A wheel is a zip of what goes into site-packages
    (these carry no scripts or data), so no pip is needed on the machine."""
    import importlib.metadata
    import tempfile
    import zipfile

    wanted = []
    for wheel in sorted(pathlib.Path(directory).glob("*.whl")):
        name = wheel.name.split("-")[0]
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wanted.append(wheel)
    if wanted:
        target = tempfile.mkdtemp(prefix="gpu_check_site_")
        for wheel in wanted:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(target)
        sys.path.append(target)  # after the machine's own packages: nothing is shadowed
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH", ""), target) if p
        )
        importlib.invalidate_caches()
    return [w.name.split("-")[0] for w in wanted]


def synthetic_crops(size: int, count: int = 64) -> list[bytes]:
    """PNG crops like a prepared dataset's (smooth face-like gradients plus noise), made here:
    the GPU machine has no network to fetch the demo's video."""
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    pngs = []
    for k in range(count):
        base = np.stack([yy * (80 + k), xx * (120 - k), (yy + xx) * 60], -1) + 60
        image = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        pngs.append(cv2.imencode(".png", image)[1].tobytes())
    return pngs


def train_config(root: pathlib.Path, dtype: str, batch: int, size: int, steps: int, tiny: bool):
    """The FF++ config (its models, augmentations and distillation) on a `folder` dataset
    written under root: random initialisation (no network), a two-step teacher stage (the
    student needs its checkpoint), `steps` student steps logged in four intervals."""
    from mkln_jax import config_lib

    config = config_lib.load("folder")
    config.data.root = str(root / "tree")
    config.data.data_dir = str(root / "tfds")
    config.data.image_size = size
    config.data.num_frames = 16
    config.data.detector, config.data.shape_predictor = "haar", ""  # crops come ready-made
    config.data.methods = config.data.train_methods = ("fake_method",)  # as written
    config.cache_dir = str(root / "cache")
    for stage in ("teacher", "student"):
        config[stage].pretrained = ""
        config[stage].batch_size = batch
        config[stage].warmup_steps = 1
        if tiny:
            config[stage].model = "small_cnn"
    config.teacher.steps = 2
    config.student.steps = steps
    config.train.log_every = max(steps // 4, 1)
    config.train.eval_every = config.train.checkpoint_every = steps
    config.train.compute_dtype = dtype
    config.train.reference_devices = 0  # the batch as given, on this one device
    config.eval.batch_size = batch
    return config


def train_case(config, workdir: pathlib.Path, videos: int, threads: int, workers: int) -> dict:
    """`mkln train` (train.train_and_evaluate, in this process) on a written dataset, against
    the same config's student step fed one resident batch (step only, steps queued back to
    back as training queues them)."""
    import _common  # bench/_common.py
    import tensorflow_datasets as tfds

    from mkln_jax import train
    from mkln_jax.input_pipeline import splits

    config.data.read_threads, config.data.read_workers = threads, workers
    tfds.disable_progress_bar()
    start = time.perf_counter()
    _common.write_face_dataset(
        splits.forgery_source(config.data),
        splits.preprocess_settings(config.data),
        config.data.data_dir,
        videos,
        lambda: synthetic_crops(config.data.image_size),
    )
    written = time.perf_counter() - start

    compiled, state, frozen, batch, hparams = _common.student_step(config)
    for _ in range(3):
        state, metrics = compiled(state, frozen, batch, hparams)
    jax.block_until_ready(metrics)
    steps = max(config.train.log_every, 10)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, frozen, batch, hparams)
    jax.block_until_ready(metrics)
    step_only = steps * config.student.batch_size / (time.perf_counter() - start)
    del compiled, state, frozen, batch, metrics  # hand the device memory back to training

    start = time.perf_counter()
    train.train_and_evaluate(config, str(workdir))
    total = time.perf_counter() - start
    log = workdir / "student" / "logs" / "metrics.jsonl"
    rows = [json.loads(line) for line in log.open()]
    timed = [r for r in rows if "train/images_per_second" in r]  # past the first interval
    rate = statistics.median(r["train/images_per_second"] for r in timed)
    idle = statistics.mean(r["train/device_idle_share"] for r in timed)
    return {
        "end_to_end_images_per_s": rate,
        "step_only_images_per_s": step_only,
        "ratio": rate / step_only,
        "device_idle_share": idle,
        "student_steps": config.student.steps,
        "train_s": total,
        "dataset_written_s": written,
        "host_cores": len(os.sched_getaffinity(0)),
        "reader_threads": threads,
        "reader_workers": workers,
    }


def step_rows(name, args, dtypes, peaks, bandwidth, torch, budget, results, modes) -> None:
    """a + c for one case: JAX at each precision (with "jax" in modes), then each PyTorch
    variant whose mode ("eager", "compile") is in modes."""
    per_image = flops_per_image(name, args.size)
    for dtype in dtypes if "jax" in modes else ():
        if budget.left() < 30:
            results["skipped"].append(f"jax {name} {dtype}: budget")
            continue
        row = jax_case(name, args.batch, args.size, dtype, args.steps, args.case_cap)
        achieved = per_image * row["images_per_s"]
        row["tflops"] = achieved / 1e12
        row["of_peak"] = achieved / peaks[dtype][0]
        row["gbytes_per_s"] = row["bytes_per_step"] / (row["ms_per_step"] / 1e3) / 1e9
        row["of_bandwidth"] = row["gbytes_per_s"] * 1e9 / bandwidth
        results["jax_steps"][f"{name}/{dtype}"] = row
        save(results)
        print(
            f"| {name} | jax | {dtype} | {row['compile_s']:.1f} | {row['images_per_s']:.0f} | "
            f"{row['tflops']:.2f} | {row['of_peak']:.1%} | {row['gbytes_per_s']:.1f} |",
            flush=True,
        )
    for precision, channels_last, mode in TORCH_VARIANTS if torch else ():
        if mode not in modes:
            continue
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
        variant = f"{precision} {'NHWC' if channels_last else 'NCHW'} {mode}"
        times = torch.run(request, min(args.case_cap, budget.left()))
        if times is None:
            results["skipped"].append(f"torch {name} {variant}: past {args.case_cap:.0f} s")
            save(results)
            continue
        images = args.batch / statistics.median(times)
        results["torch_steps"][f"{name}/{variant}"] = {
            "images_per_s": images,
            "first_call_s": time.perf_counter() - start,
            "tflops": per_image * images / 1e12,
        }
        save(results)
        print(
            f"| {name} | torch | {variant} | - | {images:.0f} | "
            f"{per_image * images / 1e12:.2f} | - | - |",
            flush=True,
        )


def train_rows(args, dtype: str, budget, results) -> None:
    """b: `mkln train` end to end against its own step alone."""
    missing = []
    for module in ("grain", "array_record", "tensorflow_datasets", "ml_collections"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing or budget.left() < args.train_budget:
        why = (
            f"{', '.join(missing)} not installed (carry bench/gpu_wheels.py's wheels: --wheels)"
            if missing
            else "budget"
        )
        results["skipped"].append(f"mkln train end to end: {why}")
        save(results)
        return
    import tempfile

    root = pathlib.Path(tempfile.mkdtemp(prefix="gpu_check_train_"))
    config = train_config(root, dtype, args.batch, args.size, args.train_steps, args.tiny)
    workers = args.workers if args.workers >= 0 else min(8, len(os.sched_getaffinity(0)) // 2)
    e2e = train_case(config, root / "run", args.videos, args.threads, workers)
    e2e["dtype"] = dtype
    results["end_to_end"] = e2e
    save(results)
    print(
        f"\nmkln train end to end ({config.student.model} from {config.teacher.model}, {dtype}, "
        f"{e2e['student_steps']} student steps, {workers} reader processes x {args.threads} "
        f"threads, {e2e['host_cores']} host cores): {e2e['end_to_end_images_per_s']:.0f} "
        f"images/s against {e2e['step_only_images_per_s']:.0f} step only ({e2e['ratio']:.0%}); "
        f"the device waited for the host {e2e['device_idle_share']:.0%} of the time",
        flush=True,
    )


OUT_PATH: list[pathlib.Path] = []


def save(results: dict) -> None:
    """Rewrites the JSON (atomically): a run cut short keeps every case it finished."""
    if not OUT_PATH:
        return
    text = io.StringIO()
    json.dump(results, text, indent=2)
    partial = OUT_PATH[0].with_suffix(".partial")
    partial.write_text(text.getvalue())
    partial.replace(OUT_PATH[0])


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
    parser.add_argument("--wheels", default="", help="bench/gpu_wheels.py's folder")
    parser.add_argument("--train_steps", type=int, default=300, help="mkln train's student")
    parser.add_argument("--train_budget", type=float, default=240.0, help="seconds it needs")
    parser.add_argument("--videos", type=int, default=160, help="of the written dataset")
    parser.add_argument("--threads", type=int, default=4, help="reader threads per process")
    parser.add_argument("--workers", type=int, default=-1, help="reader processes (-1: auto)")
    parser.add_argument("--case_cap", type=float, default=150.0, help="seconds per case")
    parser.add_argument(
        "--out", default=str(pathlib.Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    )
    parser.add_argument("--count_flops", action="store_true", help="print FLOPS_PER_IMAGE_256")
    args = parser.parse_args()
    installed = install_wheels(args.wheels) if args.wheels else []
    OUT_PATH[:] = [pathlib.Path(args.out)] if args.out else []
    from absl import flags

    from mkln_jax.cli.main import compilation_cache

    compilation_cache()  # as every `mkln` command: a rerun on this machine compiles nothing
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    if args.tiny:  # the same code paths with the small CNN: a minute or two on 2 CPU cores
        args.batch, args.size, args.steps = 4, 32, 2
        args.cases = args.cases if args.cases != ",".join(CASES) else "distill"
        args.dtypes = "float32"
        args.train_steps, args.train_budget, args.videos = 8, 0, 20
        args.workers = 0 if args.workers < 0 else args.workers
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
        "installed_from_wheels": installed,
        "jax_steps": {},
        "torch_steps": {},
        "skipped": [],
    }
    print(f"{results['device']}, jax {jax.__version__}, batch {args.batch}, {args.size} px")
    if installed:
        print(f"installed from {args.wheels}: {', '.join(installed)}")
    cases = [c for c in args.cases.split(",") if c]
    dtypes = [d for d in args.dtypes.split(",") if d]
    peaks = {d: step_bench.device_peak(d) for d in dtypes}
    bandwidth = next((v for k, v in GPU_BANDWIDTH.items() if k in kind), float("nan")) * 1e12
    python, torch_version = torch_python(args.torch_python)
    results["torch"] = torch_version
    if not python:
        print(f"skipped: {torch_version}", flush=True)
    torch = Torch(python) if python and device.platform == "gpu" else None
    if python and device.platform != "gpu":
        results["torch"] = f"{torch_version} (not run: no GPU here)"

    # Most important first, so a short lease still returns it: the distillation step in JAX
    # (a + c), mkln train end to end (b), the same step in eager PyTorch, then under
    # torch.compile (slow to start), then the single models (JAX and eager, then compile).
    print("\n| step | framework | variant | compile s | images/s | TFLOP/s | of peak | GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    common = (args, dtypes, peaks, bandwidth, torch, budget, results)
    others = [name for name in cases if name != "distill"]
    save(results)
    if "distill" in cases:
        step_rows("distill", *common, modes=("jax",))
        train_rows(args, dtypes[-1], budget, results)
        step_rows("distill", *common, modes=("eager",))
        step_rows("distill", *common, modes=("compile",))
    for name in others:
        step_rows(name, *common, modes=("jax", "eager"))
    for name in others:
        step_rows(name, *common, modes=("compile",))
    if torch:
        torch.close()
    for item in results["skipped"]:
        print(f"skipped: {item}")
    results["total_s"] = budget.seconds - budget.left()
    save(results)
    print(f"\n{results['total_s']:.0f} s in all")


if __name__ == "__main__":
    main()
