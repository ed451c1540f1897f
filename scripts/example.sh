#!/usr/bin/env bash
# The main job on the bundled example: build examples/hello into an OCI image layout (no registry, no network),
# check it with skopeo, then unpack it with `snapfs apply` and run its command in a chroot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
out=out/example
rm -rf "$out" examples/hello/rootfs
mkdir -p "$out" examples/hello/rootfs/bin
cp /bin/busybox examples/hello/rootfs/bin/busybox
SOURCE_DATE_EPOCH=1700000000 "$PY" -m snapfs build --context examples/hello --no-push \
  --oci-layout-path "$out/hello-oci" --tar-path "$out/hello.tar" --digest-file "$out/digest" --reproducible
echo "== skopeo inspect"
skopeo inspect "oci:$out/hello-oci" | head -20
echo "== run the image's command in a chroot"
mkdir -p "$out/rootfs"
layers=$("$PY" - "$out/hello-oci" <<'PYEOF'
import sys
from snapfs.image.layout import read_layout
print(" ".join(l.path for l in read_layout(sys.argv[1]).layers))
PYEOF
)
"$PY" -m snapfs apply $layers "$out/rootfs"
chroot --userspec=1000:1000 "$out/rootfs" /bin/env -i GREETING="hello from snapfs" HOME=/home/app \
  /bin/sh -c 'cd /home/app && /usr/local/bin/hello'
echo "== done: image $(cat "$out/digest") in $out/hello-oci"
