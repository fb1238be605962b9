"""`mkln predict`: score images, videos or folders with an exported artifact."""

from __future__ import annotations

from absl import flags

from mkln_jax.cli import common

SUMMARY = "score images, videos or folders with an exported artifact"
USAGE = (
    "mkln predict PATH [PATH ...] --artifact=DIR [--report=FILE.csv|.json] [--strip=DIR] "
    "[--aggregate=mean|max|confident] [--explain] [--detector=haar|dlib|retinaface]"
)
EXAMPLE = "mkln predict clip.mp4 photos/ --artifact=runs/demo/export --report=scores.csv"
TAKES_CONFIG = False
EXIT_STATUS = "exit status: 0 every input scored, 1 some skipped, 2 none scored"


def define_flags() -> list[str]:
    FLAGS = common.FLAGS
    if "num_frames" not in FLAGS:
        flags.DEFINE_integer("num_frames", 0, "Frames per video (default: the artifact's).")
        flags.DEFINE_string("report", "", "Write per-frame scores to this .csv or .json.")
        flags.DEFINE_string("strip", "", "Write an annotated strip of frames (PNG) per input here.")
        flags.DEFINE_enum(
            "aggregate",
            "",
            ["", "mean", "max", "confident"],
            "Video score from frame scores (default: the artifact's; docs/evaluation.md).",
        )
        flags.DEFINE_boolean(
            "explain", False, "Add input-gradient saliency maps over the face crops to --strip."
        )
        flags.DEFINE_string(
            "detector",
            "",
            "Find faces with this detector instead of the training data's (default: the "
            "artifact's face pipeline; a note says the crops then differ from training).",
        )
    return [
        *common.artifact(),
        *common.workdir(),
        "num_frames",
        "report",
        "strip",
        "aggregate",
        "explain",
        "detector",
    ]


def main(config, args: list[str]) -> int:
    from mkln_jax import predict

    FLAGS = common.FLAGS
    return predict.run(
        args,
        common.artifact_dir(),
        FLAGS.num_frames,
        FLAGS.report,
        FLAGS.strip,
        aggregate=FLAGS.aggregate,
        explain=FLAGS.explain,
        detector=FLAGS.detector,
    )
