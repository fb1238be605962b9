"""`mkln train`: the configured stages (teacher, then student)."""

from __future__ import annotations

from absl import flags

from mkln_jax.cli import common

SUMMARY = "train the teacher, then distil the student (resumes; one run per workdir)"
USAGE = (
    "mkln train --config=CONFIG --workdir=DIR [--config.a.b=v ...] "
    "[--compile_only [--topology=v5e:4x4]]"
)
EXAMPLE = "mkln train --config=demo --workdir=runs/demo --config.distill.temperature=4"
TAKES_CONFIG = True


def define_flags() -> list[str]:
    if "compile_only" not in common.FLAGS:
        flags.DEFINE_bool(
            "compile_only",
            False,
            "Compile each stage's step and print its cost per device (memory and whether it "
            "fits, FLOPs, bytes, collectives, a roofline time); train nothing.",
        )
        flags.DEFINE_string(
            "topology",
            "",
            "With --compile_only: compile for this TPU topology instead of this machine's "
            "devices (v5e:4x4, v5e:16x16, v5p:2x2x4, v4:2x2x4), with libtpu and no TPU.",
        )
    return [*common.workdir(), "compile_only", "topology"]


def compile_only(config, topology: str) -> int:
    """Each stage's step compiled for this machine's devices or a TPU topology; one line each."""
    import contextlib

    from mkln_jax import aot, config_lib, population, sharding
    from mkln_jax.backends.cpu import native

    chip = None
    if topology:
        kind = topology.split(":")[0]
        if kind not in aot.CHIPS:
            raise config_lib.ConfigError(
                f"--topology={topology}: expected one of {sorted(aot.CHIPS)} then ':' and the "
                "shape, e.g. v5e:4x4"
            )
        aot.use_libtpu()
        devices, chip = aot.topology_devices(topology), aot.CHIPS[kind]
        if config.train.compute_dtype == "auto":  # what "auto" is on the TPU, not on this host
            with config.unlocked():
                config.train.compute_dtype = "bfloat16"
    else:
        import jax

        devices = jax.devices()
    if population.enabled(config):
        print("note: a population's step is compiled as its single student's")
    mesh = sharding.make_mesh(config.train.mesh_data, config.train.mesh_fsdp, devices=devices)
    config = config_lib.for_devices(config, mesh.devices.size)  # as `mkln train` would run it
    where = topology or f"{devices[0].platform}"
    code = 0
    for stage in config.stages:
        with native.portable() if topology else contextlib.nullcontext():
            compiled = aot.lower_train_step(config, stage, mesh).compile()
        r = aot.cost_report(compiled, mesh.devices.size, chip)
        counts = ", ".join(f"{n} {op}" for op, n in r["collective_count"].items()) or "none"
        line = (
            f"[{stage}] {where} ({mesh.devices.size} devices, batch {config[stage].batch_size}): "
            f"{r['memory_bytes'] / 2**30:.2f} GiB per device"
        )
        if chip is not None:
            line += f" of {chip.hbm / 2**30:.0f} ({'fits' if r['fits'] else 'DOES NOT FIT'})"
            code = code or (0 if r["fits"] else 2)
        line += (
            f", {r['flops'] / 1e9:.1f} GFLOP and {r['bytes_accessed'] / 1e9:.2f} GB accessed, "
            f"collectives: {counts}, {r['bytes_sent'] / 1e6:.1f} MB sent per device"
        )
        if chip is not None:
            parts = r["roofline_parts_s"]
            line += (
                f"; roofline {r['roofline_s'] * 1e3:.1f} ms (compute {parts['compute'] * 1e3:.1f}"
                f", HBM {parts['hbm'] * 1e3:.1f}, ICI {parts['ici'] * 1e3:.1f})"
            )
        print(line, flush=True)
    return code


def main(config, args: list[str]) -> int:
    from mkln_jax import train

    if common.FLAGS.compile_only:
        return compile_only(config, common.FLAGS.topology)

    results = train.train_and_evaluate(config, common.FLAGS.workdir)
    for stage, result in results.items():
        if result and all(isinstance(v, dict) for v in result.values()):  # a population
            print(f"[{stage}] best validation checkpoints:")
            for member, best in result.items():
                print(f"  {member}: step {best.get('best_step')}")
        else:
            print(f"[{stage}] best validation: {result}")
    return 0
