#!/usr/bin/env bash
# Build llama.cpp's OpenAI-compatible `llama-server` (and keep its GGUF converter) from the
# llama.cpp tree shipped inside the llama-cpp-python source distribution.
#
# The result is cached by the source archive's SHA-256, so a second call is instant:
#   scripts/build_llama_server.sh            # prints the cache folder, e.g. ~/.cache/grm/llama-cpp/<sha>
#   LD_LIBRARY_PATH=$DIR/bin $DIR/bin/llama-server   # the server binary and its libraries
#   $DIR/src/convert_hf_to_gguf.py           # the converter `grm export-gguf` runs
# The cache root is $GRM_HOME/llama-cpp (default ~/.cache/grm/llama-cpp). Building takes about
# 9 minutes on 2 cores. Only the final folder path is written to stdout; progress goes to stderr.
set -euo pipefail

# One function, called on the last line: bash reads the whole file before running any of it,
# so editing the script while a build runs cannot derail that build.
main() {

    VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
    ROOT="${GRM_HOME:-$HOME/.cache/grm}/llama-cpp"
    JOBS="${LLAMA_BUILD_JOBS:-$(nproc)}"
    mkdir -p "$ROOT/downloads"

    SDIST="$ROOT/downloads/llama_cpp_python-$VERSION.tar.gz"
    if [ ! -f "$SDIST" ]; then
        python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" \
            -d "$ROOT/downloads" >&2
    fi
    SHA="$(sha256sum "$SDIST" | cut -c1-16)"
    DEST="$ROOT/$SHA"
    if [ -x "$DEST/bin/llama-server" ] && [ -d "$DEST/src/conversion" ]; then
        echo "$DEST"
        exit 0
    fi

    # Build in a scratch folder and move the result in at the end, so that an interrupted
    # build never leaves a half-filled cache entry that looks complete.
    WORK="$(mktemp -d "$ROOT/build.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    tar -xzf "$SDIST" -C "$WORK"
    TREE="$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)"
    echo "building llama-server from $TREE with $JOBS jobs" >&2
    cmake -S "$TREE" -B "$TREE/build" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON >&2  # the libraries are found beside the binary, once moved
    cmake --build "$TREE/build" --target llama-server -j "$JOBS" >&2

    STAGE="$WORK/out"
    mkdir -p "$STAGE/bin" "$STAGE/src"
    cp "$TREE/build/bin/llama-server" "$STAGE/bin/"
    # Shared libraries, when the build produced them, sit next to the binary.
    find "$TREE/build/bin" -maxdepth 1 -name '*.so*' -exec cp -P {} "$STAGE/bin/" \;
    cp "$TREE/convert_hf_to_gguf.py" "$STAGE/src/"
    cp -r "$TREE/gguf-py" "$STAGE/src/gguf-py"
    cp -r "$TREE/conversion" "$STAGE/src/conversion"
    [ -f "$TREE/convert_hf_to_gguf_update.py" ] && cp "$TREE/convert_hf_to_gguf_update.py" "$STAGE/src/"
    rm -rf "$DEST"
    mv "$STAGE" "$DEST"
    echo "$DEST"
}

main "$@"
