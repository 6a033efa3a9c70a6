#!/usr/bin/env bash
# Installs chord's build and test dependencies from Debian 12's packages.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: run as root (it uses apt-get)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config git ca-certificates \
  libabsl-dev libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
  libzmq3-dev cppzmq-dev libgtest-dev libgmock-dev libbenchmark-dev \
  libcli11-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libyaml-cpp-dev libcpp-httplib-dev \
  libxxhash-dev libicu-dev libssl-dev python3-grpcio python3-protobuf prometheus \
  clang libclang-rt-14-dev \
  iproute2 jq openssl >/dev/null
