"""Build a tiny random-weight gpt-oss with the real o200k_harmony tokenizer, offline.

Run inside `.venv-llm`:

    .venv-llm/bin/python -m serving.tiny_gpt_oss OUTDIR

vLLM treats any `model_type == "gpt_oss"` model the way it treats
gpt-oss-20b: harmony prompt rendering, harmony output parsing into
`reasoning` and `content`, `reasoning_effort`, structured output after
`<|constrain|>json`. Its random weights say nothing useful, so tests choose
its output token by token with `serving.scripted_logits`. The tokenizer
must therefore match harmony's ids exactly; `build_tokenizer` checks that.

The vocabulary comes from the `openai_harmony` package (a vLLM dependency
that carries it inside), so nothing is downloaded. `serving.models.tiny_gpt_oss_dir`
runs this once and caches OUTDIR (written aside, then renamed).
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
from pathlib import Path
from typing import Any

# o200k_base's pre-tokenizer pattern (tiktoken_ext.openai_public.o200k_base),
# shared by o200k_harmony.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
VOCAB_SIZE = 201088  # gpt-oss's embedding size: the 201,088 harmony ids
FIRST_SPECIAL = 199998  # <|startoftext|>; ordinary BPE tokens are 0..199997

# Small enough to load in seconds on CPU, shaped like the real one (sliding
# and full attention layers, attention sinks, MoE with top-k routing).
TINY_SHAPE: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 128,
    "intermediate_size": 128,
    "head_dim": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "layer_types": ["sliding_attention", "full_attention"],
    "max_position_embeddings": 4096,
}
# Token ids as in openai/gpt-oss-20b's config and generation_config.
BOS, EOS_RETURN, PAD_ENDOFTEXT, CALL = 199998, 200002, 199999, 200012

CHECK_TEXTS = [
    "Hello, world! The capital of France is Paris.",
    '{"relevant": true, "reason": "It names the capital."}',
    "Ünïcödé  spaces\n\n\tand 12345 digits — 東京",
    "<|start|>assistant<|channel|>final <|constrain|>json<|message|>{}<|return|>",
]


def _harmony() -> Any:
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)


def special_tokens(encoding: Any) -> list[str]:
    """Harmony's special tokens in id order, one per id from 199998 to 201087."""
    by_id: dict[int, str] = {}
    for name in encoding.special_tokens_set:
        (token_id,) = encoding.encode(name, allowed_special="all")
        # Harmony also reserves 201088, which has no row in the embedding.
        if token_id < VOCAB_SIZE:
            by_id[token_id] = name
    ids = sorted(by_id)
    if ids != list(range(FIRST_SPECIAL, VOCAB_SIZE)):
        raise RuntimeError(f"unexpected harmony special ids {ids[0]}..{ids[-1]}")
    return [by_id[i] for i in ids]


def build_tokenizer(out_dir: Path) -> None:
    """Write the o200k_harmony tokenizer as a Hugging Face fast tokenizer."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    encoding = _harmony()
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "o200k_harmony.tiktoken"
        with vocab_file.open("w") as f:
            for rank in range(FIRST_SPECIAL):
                token = bytes(encoding._inner.decode_bytes([rank]))
                f.write(f"{base64.b64encode(token).decode()} {rank}\n")
        specials = special_tokens(encoding)
        converter = TikTokenConverter(
            vocab_file=str(vocab_file), pattern=O200K_PATTERN, extra_special_tokens=specials
        )
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=converter.converted(),
            bos_token="<|startoftext|>",
            eos_token="<|return|>",
            pad_token="<|endoftext|>",
            model_max_length=TINY_SHAPE["max_position_embeddings"],
        )
    for text in CHECK_TEXTS:
        ours = tokenizer.encode(text, add_special_tokens=False)
        theirs = encoding.encode(text, allowed_special="all")
        if ours != theirs:
            raise RuntimeError(f"tokenizer disagrees with harmony on {text!r}")
    if len(tokenizer) != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} ids, expected {VOCAB_SIZE}")
    tokenizer.save_pretrained(out_dir)


def build_model(out_dir: Path, seed: int = 0) -> None:
    """Write a randomly initialised tiny GptOssForCausalLM (bf16, ~100 MB)."""
    import torch
    from transformers import GenerationConfig, GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    config = GptOssConfig(
        **TINY_SHAPE,
        vocab_size=VOCAB_SIZE,
        bos_token_id=BOS,
        eos_token_id=EOS_RETURN,
        pad_token_id=PAD_ENDOFTEXT,
    )
    model = GptOssForCausalLM(config).bfloat16()
    model.save_pretrained(out_dir)
    # vLLM stops on these (harmony's <|return|> and <|call|>, plus EOS).
    GenerationConfig(
        bos_token_id=BOS, eos_token_id=[EOS_RETURN, PAD_ENDOFTEXT, CALL], pad_token_id=PAD_ENDOFTEXT
    ).save_pretrained(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(args.out_dir)
    build_model(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
