"""Stand-in for `scontrol requeue JOB`: records the request in $STANDIN_DIR/requeued."""

import os
import sys

if __name__ == "__main__":
    if sys.argv[1:2] != ["requeue"]:
        sys.exit(f"stand-in scontrol: only `requeue` is rehearsed, got {sys.argv[1:]}")
    with open(os.path.join(os.environ["STANDIN_DIR"], "requeued"), "a") as f:
        f.write(" ".join(sys.argv[2:]) + "\n")
