#!/usr/bin/env bash
# Installs the Debian packages ergo builds and tests against (a fresh Debian 12 is enough).
# Runs apt-get directly as root, through sudo otherwise.
set -euo pipefail
packages=(
  make build-essential pkg-config   # the build
  clang libclang-rt-14-dev          # libFuzzer targets (make fuzz, make check)
  libjansson-dev                    # JSON
  libpcre2-dev libutf8proc-dev      # the tokenizer's regex and Unicode normalisation
  libjpeg62-turbo-dev libpng-dev    # image decoding
  nettle-dev                        # SHA-256
  libcurl4-openssl-dev              # models from the Hugging Face hub (HTTPS)
  libmicrohttpd-dev                 # ergo serve; the eval endpoint test's loopback server
  libgd-dev                         # the --save-viz picture (text, PNG)
  libsnappy-dev libzstd-dev zlib1g-dev  # codecs of the benchmarks' parquet files (ergo eval)
  libopenmpi-dev openmpi-bin        # mpirun -np K ergo eval (optional: built when found)
)
if [ "$(id -u)" = 0 ]; then sudo=; else sudo=sudo; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
