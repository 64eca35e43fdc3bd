"""Convert a GGUF checkpoint into a Hugging Face folder that vLLM can load.

Run inside `.venv-llm` (it needs torch, transformers and gguf):

    .venv-llm/bin/python serving/convert_gguf.py MODEL.gguf OUTDIR

`serving.models.smollm2_dir` runs this once per GGUF and caches OUTDIR; it writes to a
temporary folder and renames it, so this script just writes where it is told.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize `gguf_path` to float32 and save model + tokenizer in `out_dir`."""
    # Everything needed is in the file; never let transformers reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # transformers 5.x keeps GGUF weights packed (and refuses to save them)
    # unless asked to dequantize. float32, because SmolLM2 served in bf16 by
    # vLLM loops and answers nonsense (see shared/LLM_TESTING.md).
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        quantization_config=GgufConfig(gguf_file=str(gguf_path), dequantize=True),
        dtype=torch.float32,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", type=Path, help="path to the .gguf file")
    parser.add_argument("out_dir", type=Path, help="folder to write the model to")
    args = parser.parse_args(argv)
    if not args.gguf.is_file():
        print(f"error: no such GGUF file: {args.gguf}", file=sys.stderr)
        return 2
    convert(args.gguf.resolve(), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
