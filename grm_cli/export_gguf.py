"""``grm export-gguf``: a checkpoint as one GGUF file, for llama.cpp's server (``llama-server``).

    grm export-gguf --output grm-default-f32.gguf                       # the bundled GRM, f32
    grm export-gguf --model path/to/checkpoint --outtype q8_0 --output judge-q8.gguf
    llama-server -m grm-default-f32.gguf --port 8080 -np 8 -c 16384     # then: grm serve --engine-url ...

The conversion is llama.cpp's own ``convert_hf_to_gguf.py`` with the ``gguf-py`` beside it
(the published ``gguf`` package does not fit that script; grm/models/MODEL_CARD.md). It is
found, in order: ``--converter``; under ``$GRM_HOME/llama-cpp/`` where
``scripts/build_llama_server.sh`` (or an earlier export) left it; else the llama-cpp-python
source distribution is fetched with pip and only the converter is unpacked there. The
checkpoint is only read. The converter prints its own progress to stderr; the output path
goes to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from grm.default_model import default_model_path, grm_home
from grm_cli.common import say

NAME = "export-gguf"
HELP = "convert a checkpoint (default: the bundled GRM) to GGUF for llama.cpp's server"
SDIST_VERSION = "0.3.36"  # the llama-cpp-python source distribution the build script uses too
CONVERTER = "convert_hf_to_gguf.py"
OUTTYPES = ("f32", "f16", "bf16", "q8_0", "auto")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint folder (default: the bundled GRM)")
    p.add_argument("--output", required=True, help="the .gguf file to write")
    p.add_argument("--outtype", choices=OUTTYPES, default="f32", help="tensor type (default f32: exact)")
    p.add_argument("--converter", help=f"path to llama.cpp's {CONVERTER} (default: found or fetched, see above)")


def llama_cpp_root() -> Path:
    return grm_home() / "llama-cpp"


def find_converter() -> Path | None:
    """A converter left by the build script or an earlier export, newest first."""
    found = sorted(llama_cpp_root().glob(f"*/src/{CONVERTER}"), key=lambda p: p.stat().st_mtime, reverse=True)
    return found[0] if found else None


def fetch_converter() -> Path:
    """Download the source distribution with pip and unpack the converter with the packages it
    imports from beside it (``conversion``, ``gguf-py``)."""
    downloads = llama_cpp_root() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    sdist = downloads / f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
    if not sdist.is_file():
        say(f"fetching the llama-cpp-python {SDIST_VERSION} source distribution for its converter ...")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={SDIST_VERSION}", "-d", str(downloads)], check=True)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()[:16]  # the build script's cache name
    dest = llama_cpp_root() / digest / "src"
    if (dest / CONVERTER).is_file():
        return dest / CONVERTER
    prefix = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"
    with tempfile.TemporaryDirectory(dir=llama_cpp_root()) as tmp, tarfile.open(sdist) as tar:
        wanted = [m for m in tar.getmembers() if m.name == prefix + CONVERTER
                  or m.name.startswith((prefix + "gguf-py/", prefix + "conversion/"))]
        tar.extractall(tmp, members=wanted, filter="data")
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(Path(tmp) / prefix, dest)
    return dest / CONVERTER


def run(args: argparse.Namespace) -> int:
    model = Path(args.model) if args.model else default_model_path()
    if not (model / "config.json").is_file():
        raise SystemExit(f"grm export-gguf: --model {model} is not a checkpoint folder (no config.json)")
    converter = Path(args.converter) if args.converter else (find_converter() or fetch_converter())
    if not converter.is_file():
        raise SystemExit(f"grm export-gguf: --converter {converter} does not exist")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    say(f"converting {model} with {converter} ({args.outtype}) ...")
    done = subprocess.run([sys.executable, str(converter), str(model), "--outtype", args.outtype,
                           "--outfile", str(output)], stdout=sys.stderr)
    if done.returncode != 0 or not output.is_file():
        raise SystemExit(f"grm export-gguf: the converter failed (exit {done.returncode}); its output is above")
    print(output)
    return 0
