"""Train-step images/s of mkln_jax against the same step in PyTorch (eager, and torch.compile
with --compile), on this CPU, measured in one run: blocks of --steps steps alternate between
the two (--rounds times) and each side's median step time is compared.

Cases: ResNet-18, EfficientNet-B0 and Xception (plain train steps), and the distillation step
(EfficientNet-B0 student + frozen ResNet-18 teacher + full-image DCT band augmentation + KD).
Same batch, resolution, float32, loss and optimizer (SGD, momentum 0.9) on both sides.

    python bench/torch_compare.py [--torch_python=.venv-torch/bin/python] [--batch=32 --size=128]

The PyTorch side runs bench/torch_worker.py in its own Python (torch wheels exist here for 3.11
only; `make parity` builds .venv-torch with torch, torchvision and timm).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import jax
import numpy as np
import optax

from mkln_jax import models
from mkln_jax import step as step_lib
from mkln_jax.backends.cpu import hostmem, xla_options

hostmem.tune()  # as `mkln` does, before the first JAX computation

HERE = pathlib.Path(__file__).resolve().parent
CASES = ("resnet18", "efficientnet_b0", "xception", "distill")
WARMUP = 15


def jax_step(case: str, batch: int, size: int):
    tx = optax.sgd(0.01, momentum=0.9)
    student = "efficientnet_b0" if case == "distill" else case
    model = models.build(student, 2)
    graphdef, _, _ = step_lib.split_model(model)
    spec = models.spec(student)
    teachers, frozen, method = (), None, step_lib.Method()
    if case == "distill":
        t_graph, t_params, t_stats = step_lib.split_model(models.build("resnet18", 2))
        t_spec = models.spec("resnet18")
        teachers = (step_lib.ModelFn(t_graph, t_spec.mean, t_spec.std),)
        frozen = (step_lib.Frozen(t_params, t_stats),)
        method = step_lib.Method(frequency_augment=True)
    fn = jax.jit(
        step_lib.make_train_step(
            step_lib.ModelFn(graphdef, spec.mean, spec.std), tx, teachers=teachers, method=method
        ),
        donate_argnums=0,
    )
    rng = np.random.default_rng(0)
    data = {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "label": np.tile(np.int32([0, 1]), batch // 2),
    }
    hp = {
        k: np.float32(v)
        for k, v in {"temperature": 6.0, "alpha": 0.95, "freq_prob": 1.0, "jitter": 0.5}.items()
    }
    state = [step_lib.init_state(model, tx, 0)]
    start = time.perf_counter()
    # Compiled as the trainer compiles it, with the student's XLA:CPU convolution library.
    options = xla_options.for_model(student)
    compiled = fn.lower(state[0], frozen, data, hp).compile(compiler_options=options)
    compile_s = time.perf_counter() - start

    def run(steps: int) -> list[float]:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state[0], metrics = compiled(state[0], frozen, data, hp)
            jax.block_until_ready(metrics["loss"])
            times.append(time.perf_counter() - t0)
        return times

    # XLA:CPU runs a freshly compiled step at about half speed for its first ~10 executions
    # (measured: 58 vs 136 images/s on the demo step), so warm up well past that.
    run(WARMUP)
    return run, compile_s


def main() -> None:
    parser = argparse.ArgumentParser()
    default_torch = HERE.parent / ".venv-torch" / "bin" / "python"
    parser.add_argument(
        "--torch_python", default=os.environ.get("MKLN_TORCH_PYTHON", str(default_torch))
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--compile", action="store_true", help="also torch.compile")
    args = parser.parse_args()
    if not pathlib.Path(args.torch_python).exists():
        sys.exit(f"no PyTorch Python at {args.torch_python}: run `make parity` (or pass one)")
    threads = str(os.cpu_count())
    worker = subprocess.Popen(
        [args.torch_python, str(HERE / "torch_worker.py"), threads],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def torch_run(case: str, mode: str, steps: int) -> tuple[list[float], str]:
        request = {
            "case": case,
            "batch": args.batch,
            "size": args.size,
            "steps": steps,
            "mode": mode,
        }
        worker.stdin.write(json.dumps(request) + "\n")
        worker.stdin.flush()
        line = worker.stdout.readline()
        while line and not line.startswith("{"):  # libraries may print to stdout too
            print(f"[torch] {line.rstrip()}", file=sys.stderr)
            line = worker.stdout.readline()
        if not line:
            sys.exit("the PyTorch worker stopped; see its error above")
        answer = json.loads(line)
        return answer["seconds"], answer["torch"]

    modes = ["eager", *(["compile"] if args.compile else [])]
    print(
        f"{os.cpu_count()}-core CPU, float32, batch {args.batch}, {args.size} px, jax "
        f"{jax.__version__}; {args.rounds} rounds of {args.steps} steps, interleaved, "
        "median step time\n"
    )
    header = "| step | jax images/s | " + " | ".join(f"torch {m} images/s" for m in modes)
    header += " | " + " | ".join(f"jax / torch {m}" for m in modes) + " | jax compile s |"
    print(header)
    print("|---" * (2 + 2 * len(modes) + 1) + "|")
    version = ""
    for case in args.cases.split(","):
        run, compile_s = jax_step(case, args.batch, args.size)
        times = {"jax": [], **{m: [] for m in modes}}
        for _ in range(args.rounds):
            times["jax"] += run(args.steps)
            for mode in modes:
                seconds, version = torch_run(case, mode, args.steps)
                times[mode] += seconds
        rate = {k: args.batch / statistics.median(v) for k, v in times.items()}
        name = "distill (EffNet-B0 + ResNet-18 teacher + DCT + KD)" if case == "distill" else case
        cells = [f"{rate['jax']:.1f}", *(f"{rate[m]:.1f}" for m in modes)]
        cells += [f"{rate['jax'] / rate[m]:.2f}x" for m in modes]
        print(f"| {name} | " + " | ".join(cells) + f" | {compile_s:.1f} |", flush=True)
    worker.stdin.close()
    worker.wait()
    print(f"\ntorch {version}")


if __name__ == "__main__":
    main()
