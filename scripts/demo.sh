#!/usr/bin/env bash
# `make demo`: fetch the weights, then align + invert + edit a sample photo into demo-out/, and
# print what to type next. Where the real weights cannot be downloaded (no internet) and the
# parity folder is beside the checkout, it falls back to a SYNTHETIC checkpoint (random weights)
# in .cache/demo-weights and says so loudly: the pipeline runs end to end, but the pictures are
# not faces. The commands printed at the end point the tool at that folder (E4E_WEIGHTS_DIR).
#
# `scripts/demo.sh --next` prints only those next commands (for the weights this checkout has).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
E4E=.venv/bin/e4e
PY=.venv/bin/python
OUT=demo-out
PARITY=${E4E_PARITY_DIR:-../shared/parity}
DEMO_WEIGHTS=${E4E_DEMO_WEIGHTS:-$ROOT/.cache/demo-weights}

next_steps() {  # $1: "synthetic" when the demo ran on the synthetic weights
  echo
  echo "what to type next (in $ROOT):"
  echo "  source .venv/bin/activate    # puts e4e on your PATH (or type .venv/bin/e4e for e4e)"
  if [ "${1:-}" = synthetic ]; then
    echo "  export E4E_WEIGHTS_DIR=\"$DEMO_WEIGHTS\"    # the demo's SYNTHETIC weights (or pass --weights-dir)"
  fi
  echo "  cd $OUT                 # where the demo inverted its photo: \`e4e edit\` with no photo edits it"
  echo "  e4e edit --direction age --sweep -3:3:7    # a strip (strengths in its corners) and a GIF in e4e-out/edits/"
  echo "  e4e directions               # every direction -d takes"
  echo "  e4e invert YOUR_PHOTO.jpg && e4e edit --direction smile --strength 3 --paste-back"
  echo "  e4e ui                       # the local page"
  if [ "${1:-}" = synthetic ]; then
    echo "  e4e download-weights ffhq directions    # the real weights, when you are online"
  fi
}

if [ "${1:-}" = --next ]; then
  if [ -f "$DEMO_WEIGHTS/e4e_ffhq_encode.pt" ] && ! $E4E download-weights --list ffhq 2>/dev/null | grep -q " present"; then
    next_steps synthetic
  else
    next_steps
  fi
  exit 0
fi

rm -rf "$OUT" && mkdir -p "$OUT"
SYNTHETIC=
if $E4E download-weights ffhq directions; then
  echo "weights ready"
elif [ -f "$PARITY/make_checkpoint.py" ]; then
  echo
  echo "!! The real weights could not be downloaded. Using a SYNTHETIC checkpoint (random weights)"
  echo "!! from $PARITY: every step runs for real, but the generated images are not faces."
  echo
  SYNTHETIC=synthetic
  export E4E_WEIGHTS_DIR="$DEMO_WEIGHTS"
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
cd "$ROOT"
next_steps "$SYNTHETIC"
