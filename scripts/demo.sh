#!/usr/bin/env bash
# `make demo`: fetch the weights, then align + invert + edit a sample photo into demo-out/.
# Where the real weights cannot be downloaded (no internet) and the parity folder is beside
# the checkout, it falls back to a SYNTHETIC checkpoint (random weights) and says so loudly:
# the pipeline runs end to end, but the pictures are not faces.
set -euo pipefail
cd "$(dirname "$0")/.."
E4E=.venv/bin/e4e
PY=.venv/bin/python
OUT=demo-out
PARITY=${E4E_PARITY_DIR:-../shared/parity}
rm -rf "$OUT" && mkdir -p "$OUT"

if $E4E download-weights ffhq directions; then
  echo "weights ready"
elif [ -f "$PARITY/make_checkpoint.py" ]; then
  echo
  echo "!! The real weights could not be downloaded. Using a SYNTHETIC checkpoint (random weights)"
  echo "!! from $PARITY: every step runs for real, but the generated images are not faces."
  echo
  export E4E_WEIGHTS_DIR="$PWD/.cache/demo-weights"
  mkdir -p "$E4E_WEIGHTS_DIR"
  if [ ! -f "$E4E_WEIGHTS_DIR/e4e_ffhq_encode.pt" ]; then
    $PY "$PARITY/make_checkpoint.py" --size 1024 --seed 1 --domain ffhq "$E4E_WEIGHTS_DIR/e4e_ffhq_encode.pt.tmp"
    mv "$E4E_WEIGHTS_DIR/e4e_ffhq_encode.pt.tmp" "$E4E_WEIGHTS_DIR/e4e_ffhq_encode.pt"
  fi
  $E4E download-weights directions --from "$PARITY/directions"
else
  echo "cannot download the weights and no parity folder is available: see docs/weights.md (download-weights --from/--base-url)" >&2
  exit 1
fi

PHOTO="$PARITY/images/input_img.jpg"
if [ ! -f "$PHOTO" ]; then
  PHOTO="$OUT/astronaut.png"
  $PY -c "import skimage.data, PIL.Image; PIL.Image.fromarray(skimage.data.astronaut()).save('$PHOTO')"
fi
cp "$PHOTO" "$OUT/"
PHOTO="$OUT/$(basename "$PHOTO")"

cd "$OUT"
set -x
../$E4E align "$(basename "$PHOTO")" --out aligned
../$E4E invert "$(basename "$PHOTO")" --paste-back
../$E4E edit --direction smile --strength 3 --paste-back
../$E4E edit --direction age --sweep -3:3:5
set +x
echo
echo "demo done: see $OUT/ (aligned/, e4e-out/<photo>/, e4e-out/edits/)"
