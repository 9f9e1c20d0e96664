#!/usr/bin/env bash
# Create (or reuse) the virtualenv and install interest-explorer with its test extras. Idempotent: a second run
# with an unchanged pyproject.toml installs nothing. Installs Java and Maven (for the local Kafka broker) with
# apt-get when they are missing and this user may.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${EXPLORER_VENV:-.venv}

if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: installing Java 17 and Maven for the local Kafka broker"
    apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
  else
    echo "bootstrap: Java 17+ and Maven are needed for the local Kafka broker; install them (e.g. apt-get install openjdk-17-jre-headless maven)" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

# llama-cpp-python compiles llama.cpp for this CPU (-march=native). Some virtual machines report AMX in cpuid but
# never enable its register state, and llama.cpp's AMX kernels then die with "Illegal instruction" (seen here on
# Sapphire Rapids guests), so AMX is left out; AVX-512 and the rest stay. Built without pip's wheel cache, which
# could hold a build from before this rule.
if ! "$VENV/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
  echo "bootstrap: compiling llama-cpp-python for this CPU (~5 min on 2 cores)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/python" -m pip install -q --no-cache-dir "llama-cpp-python>=0.3.7"
fi

stamp="$VENV/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "bootstrap: installing interest-explorer and its test extras"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$VENV/bin/python" -m pip install -q -e ".[test]"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
else
  echo "bootstrap: $VENV is up to date"
fi
