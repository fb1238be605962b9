#!/usr/bin/env bash
# Regenerates every lock from pyproject.toml with uv (`make locks`), hashes included:
#   lock-py<V>.txt      runtime dependencies (what `make wheel-test` installs beside the wheel)
#   lock-dev-py<V>.txt  runtime + the test, track and hub extras (`make setup`, `make test`,
#                       `make extras`)
#   platform-<P>-py<V>.txt  JAX's own extra for P (cuda12, cuda13, tpu) at the locked jax
#                       version: only the packages the runtime lock lacks (`make setup PLATFORM=P`)
# Versions already pinned are kept (uv prefers an output file's pins); `UPGRADE=1` moves them.
# Linux x86-64 (manylinux_2_28): where our users' GPU hosts and TPU VMs run.
set -euo pipefail
cd "$(dirname "$0")"
uv=${UV:-../.venv/bin/uv}
export UV_NO_CONFIG=1
common=(--generate-hashes --no-annotate -q --custom-compile-command "make locks")
linux=(--python-platform x86_64-manylinux_2_28)
[ "${UPGRADE:-0}" = 1 ] && common+=(--upgrade)
for v in 3.12 3.11; do
  "$uv" pip compile ../pyproject.toml --python-version "$v" "${common[@]}" "${linux[@]}" \
    -o "lock-py$v.txt"
  "$uv" pip compile ../pyproject.toml --extra test --extra track --extra hub \
    --python-version "$v" "${common[@]}" "${linux[@]}" -o "lock-dev-py$v.txt"
  jax=$(sed -n 's/^jax==\([^ ]*\).*/\1/p' "lock-py$v.txt")
  for p in cuda12 cuda13 tpu; do
    tmp=$(mktemp -d)
    echo "jax[$p]==$jax" > "$tmp/in.txt"
    # libtpu's wheels are manylinux_2_31 (TPU VMs run Ubuntu 22.04 or newer)
    "$uv" pip compile "$tmp/in.txt" -c "lock-py$v.txt" --python-version "$v" "${common[@]}" \
      --python-platform x86_64-manylinux_2_31 -o "$tmp/platform.txt"
    {
      echo "# $p on Python $v: JAX's own jax[$p] extra at the locked jax ($jax), less what"
      echo "# lock-py$v.txt holds; installed with --no-deps on top of it (make locks)."
      python3 - "lock-py$v.txt" "$tmp/platform.txt" <<'PY'
import re, sys
locked = {m.group(1).lower() for m in map(re.compile(r"^([\w.-]+)==").match, open(sys.argv[1])) if m}
keep = False
for line in open(sys.argv[2]):
    m = re.match(r"^([\w.-]+)==", line)
    if m:
        keep = m.group(1).lower() not in locked
    elif not line.startswith("    "):
        keep = False
    if keep:
        sys.stdout.write(line)
PY
    } > "platform-$p-py$v.txt"
    rm -rf "$tmp"
  done
done
