"""Stand-in for `gcloud compute tpus tpu-vm {scp,ssh} ... --worker=all` (the TPU rehearsal).

The slice's workers are folders $STANDIN_DIR/worker<k> (each its own $HOME). `scp SRC TPU:DEST`
copies into each; `ssh TPU --command=CMD` runs CMD in every worker at once, in a shell that
looks like a Cloud TPU VM to jax: jax's scan of the PCI bus finds TPU chips
(standins/tpu_vm/sitecustomize.py; the processes compute on CPU devices, one per chip), and
each worker has its own metadata server on the loopback (GCE_METADATA_IP), answering what
Google's answers on a TPU VM: the worker's number, the slice's worker endpoints, its tpu-env.
Everything from there is jax's own detection and our code. Exits with the highest status;
TERM sent to this stand-in reaches every worker's processes (a maintenance event).
STANDIN_TPU_WORKERS: workers (default 2); STANDIN_COORDINATOR_PORT: jax's coordinator port.
"""

import http.server
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
CHIPS_PER_WORKER = 4


def metadata_server(attributes: dict[str, str]) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            key = self.path.rsplit("/", 1)[-1]
            ok = self.headers.get("Metadata-Flavor") == "Google" and key in attributes
            self.send_response(200 if ok else 404)
            self.end_headers()
            if ok:
                self.wfile.write(attributes[key].encode())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def option(args: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"--{name}="))


def main() -> int:
    args = sys.argv[1:]
    if args[:3] != ["compute", "tpus", "tpu-vm"] or option(args, "worker") != "all":
        sys.exit(f"stand-in gcloud: only `compute tpus tpu-vm scp|ssh --worker=all`, got {args}")
    root = pathlib.Path(os.environ["STANDIN_DIR"])
    workers = [root / f"worker{k}" for k in range(int(os.environ.get("STANDIN_TPU_WORKERS", "2")))]
    positional = [a for a in args[4:] if not a.startswith("--")]
    if args[3] == "scp":
        source, target = positional
        for home in workers:
            home.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, home / target.split(":", 1)[1])
        return 0
    command = option(args, "command")
    endpoints = ",".join("127.0.0.1" for _ in workers)
    processes = []
    for k, home in enumerate(workers):
        server = metadata_server(
            {
                "agent-worker-number": str(k),
                "worker-network-endpoints": endpoints,
                "accelerator-type": f"v4-{2 * CHIPS_PER_WORKER * len(workers)}",
                "tpu-env": f"ACCELERATOR_TYPE: 'v4-{2 * CHIPS_PER_WORKER * len(workers)}'\n"
                f"WORKER_ID: '{k}'\n",
            }
        )
        env = dict(
            os.environ,
            HOME=str(home),
            PYTHONPATH=str(HERE / "tpu_vm"),
            JAX_FORCE_TPU_INIT="1",
            JAX_PLATFORMS="cpu",
            GCE_METADATA_IP=f"127.0.0.1:{server.server_address[1]}",
            JAX_COORDINATOR_PORT=os.environ.get("STANDIN_COORDINATOR_PORT", "8482"),
            XLA_FLAGS=f"--xla_force_host_platform_device_count={CHIPS_PER_WORKER}",
        )
        env.pop("TPU_SKIP_MDS_QUERY", None)  # set by jax in this (chipless) test process
        processes.append(
            subprocess.Popen(["bash", "-c", command], cwd=home, env=env, start_new_session=True)
        )

    def forward(signum, frame):
        del frame
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    while any(p.poll() is None for p in processes):
        time.sleep(0.05)
    return max(p.returncode if p.returncode >= 0 else 128 - p.returncode for p in processes)


if __name__ == "__main__":
    sys.exit(main())
