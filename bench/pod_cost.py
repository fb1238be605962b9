"""What a config's steps cost on a pod, compiled here for the pod (issue 34).

    python bench/pod_cost.py [--config=configs/ffpp.py] [--steps=teacher,student]
        [--topologies=v5e:4x4,v5e:8x8,v5e:16x16] [--cpu=8] [--size=256] [--out=pod_cost.json]

Each step (the config's teacher and student train steps, as `mkln train` compiles them) is
compiled for every TPU topology with XLA:TPU (libtpu from the package index, unpacked into the
cache: no TPU needed; `jax.experimental.topologies`, as maxtext's train_compile.py does) and for
CPU meshes of the given sizes (the models' portable formulations, as on an accelerator). Weak
scaling: the per-chip batch is the config's global batch over 16 chips, whatever the topology.
Per step and topology it prints per-chip memory against the chip's HBM (fits or not, and the
largest per-chip batch that fits by a linear fit of two compilations), FLOPs and bytes accessed
from XLA's cost analysis, the collectives by kind with the bytes each chip sends, and a roofline
step time from the chip's published peaks (aot.CHIPS). The JSON (--out) is rewritten after every
compilation, so a long run keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def compile_step(config, stage: str, mesh, batch: int):
    """(compiled step, seconds): the step as an accelerator runs it (no CPU kernels)."""
    from mkln_jax import aot
    from mkln_jax.backends.cpu import native

    start = time.time()
    with native.portable():
        compiled = aot.lower_train_step(config, stage, mesh, batch).compile()
    return compiled, time.time() - start


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "ffpp.py"))
    p.add_argument("--steps", default="teacher,student")
    p.add_argument("--topologies", default="v5e:4x4,v5e:8x8,v5e:16x16")
    p.add_argument("--cpu", default="8", help="CPU mesh sizes (portable formulations)")
    p.add_argument("--size", type=int, default=0, help="crop size (default: the config's)")
    p.add_argument("--per_chip", type=int, default=0, help="batch per chip (default: config/16)")
    p.add_argument("--dtype", default="bfloat16", help="compute dtype on the TPU")
    p.add_argument("--fit", action="store_true", help="a second compilation: largest batch")
    p.add_argument("--out", default="pod_cost.json")
    return p.parse_args()


def main() -> int:
    args = parse()
    cpu_sizes = [int(n) for n in args.cpu.split(",") if n]
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    flags = os.environ.get("XLA_FLAGS", "")
    if cpu_sizes and "device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={max(cpu_sizes)}"
    topologies = [t for t in args.topologies.split(",") if t]
    import jax
    from _common import load_config  # bench/_common.py

    from mkln_jax import aot, sharding
    from mkln_jax.errors import MklnError

    if topologies:
        try:
            aot.use_libtpu()
        except MklnError as err:
            print(f"pod_cost: TPU topologies skipped: {err}", flush=True)
            topologies = []

    results = {"config": args.config, "jax": jax.__version__, "rows": []}
    out = pathlib.Path(args.out)

    def save():
        partial = out.with_suffix(".partial")
        partial.write_text(json.dumps(results, indent=2))
        partial.replace(out)

    targets = [(t, None) for t in topologies] + [(f"cpu:{n}", n) for n in cpu_sizes]
    print(
        "| step | target | chips | per-chip batch | memory / chip | fits | largest batch | "
        "GFLOP / chip | GB accessed / chip | collectives | payload MB / chip | MB sent / chip | "
        "roofline ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for stage in [s for s in args.steps.split(",") if s]:
        for target, cpu_count in targets:
            config = load_config(args.config)
            config.teacher.pretrained = config.student.pretrained = ""
            if args.size:
                config.data.image_size = args.size
            chip = None
            if cpu_count is None:
                devices = aot.topology_devices(target)
                chip = aot.CHIPS[target.split(":")[0]]
                config.train.compute_dtype = args.dtype
            else:
                devices = jax.devices("cpu")[:cpu_count]
            per_chip = args.per_chip or max(config[stage].batch_size // 16, 1)
            mesh = sharding.make_mesh(-1, config.train.mesh_fsdp, devices=devices)
            chips = mesh.devices.size

            compiled, seconds = compile_step(config, stage, mesh, per_chip * chips)
            row = {
                "step": stage,
                "target": target,
                "chips": chips,
                "per_chip_batch": per_chip,
                "compile_s": seconds,
                "image_size": config.data.image_size,
                "dtype": config.train.compute_dtype,
            }
            row |= aot.cost_report(compiled, chips, chip)
            largest = "-"
            if chip is not None and args.fit:
                more, _ = compile_step(config, stage, mesh, 2 * per_chip * chips)
                per_example = (
                    more.memory_analysis().temp_size_in_bytes
                    - compiled.memory_analysis().temp_size_in_bytes
                ) / per_chip
                if per_example > 0:
                    fixed = row["memory_bytes"] - per_example * per_chip
                    row["largest_per_chip_batch"] = int((chip.hbm - fixed) // per_example)
                    largest = str(row["largest_per_chip_batch"])
            results["rows"].append(row)
            save()
            counts = ", ".join(f"{n} {op}" for op, n in row["collective_count"].items())
            counts += f" ({row['batchnorm_all_reduces']} BatchNorm)"
            fits = "-" if chip is None else ("yes" if row["fits"] else "NO")
            roof = f"{row['roofline_s'] * 1e3:.1f}" if chip is not None else "-"
            print(
                f"| {stage} | {target} | {chips} | {per_chip} | "
                f"{row['memory_bytes'] / 2**30:.2f} GiB | {fits} | {largest} | "
                f"{row['flops'] / 1e9:.1f} | {row['bytes_accessed'] / 1e9:.2f} | {counts} | "
                f"{row['collective_bytes'] / 1e6:.2f} | {row['bytes_sent'] / 1e6:.1f} | {roof} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
