"""The `Embedder` for BERT-architecture model folders (the default
all-MiniLM-L6-v2) on plain PyTorch: the encoder written out here, its
weights read with `safetensors`, its tokenizer with `tokenizers`.
Importing `transformers` costs seconds at every start (ingest, `rag ask`,
each Ray worker) for machinery a BERT forward pass does not use;
`bert_problem` sends every folder this file does not reproduce exactly to
`rag.embedding_hf` (transformers) instead."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from rag.embedding import (
    Kind,
    Precision,
    TokenCounter,
    TorchEmbedder,
    _unavailable,
    canonical_model_id,
)
from rag.embedding_hf import TEXT_BATCH, Plan, Pooling, _json, model_folder, plan_of, pool
from rag.errors import ModelMissing

# Checkpoint tensors the encoder does not use: the pooler (sentence-
# transformers pools the token vectors itself) and the position-ids buffer
# (always 0..n-1).
_UNUSED = ("pooler.", "embeddings.position_ids")


class NotPlainBert(ModelMissing):
    """A folder the plain encoder does not reproduce (`bert_problem`):
    `load_embedder` reads it with transformers instead."""


@dataclass(frozen=True)
class BertConfig:
    """The sizes config.json gives a BERT encoder."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float

    @classmethod
    def of(cls, config: dict[str, Any]) -> BertConfig:
        sizes = {
            name: int(config[name]) for name in cls.__dataclass_fields__ if name != "layer_norm_eps"
        }
        return cls(**sizes, layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)))

    def tensors(self) -> dict[str, tuple[int, ...]]:
        """The checkpoint's tensor names (as transformers' BertModel saves
        them) and shapes that the encoder needs."""
        h, i = self.hidden_size, self.intermediate_size
        out: dict[str, tuple[int, ...]] = {
            "embeddings.word_embeddings.weight": (self.vocab_size, h),
            "embeddings.position_embeddings.weight": (self.max_position_embeddings, h),
            "embeddings.token_type_embeddings.weight": (self.type_vocab_size, h),
            "embeddings.LayerNorm.weight": (h,),
            "embeddings.LayerNorm.bias": (h,),
        }
        linears = {"attention.self.query": (h, h), "attention.self.key": (h, h),
                   "attention.self.value": (h, h), "attention.output.dense": (h, h),
                   "intermediate.dense": (i, h), "output.dense": (h, i)}  # fmt: skip
        for n in range(self.num_hidden_layers):
            for name, shape in linears.items():
                out[f"encoder.layer.{n}.{name}.weight"] = shape
                out[f"encoder.layer.{n}.{name}.bias"] = shape[:1]
            for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
                out[f"encoder.layer.{n}.{norm}.weight"] = (h,)
                out[f"encoder.layer.{n}.{norm}.bias"] = (h,)
        return out


def _config_problem(config: dict[str, Any]) -> str:
    if config.get("model_type") != "bert":
        return f"its model_type is {config.get('model_type')!r}, not 'bert'"
    if config.get("hidden_act", "gelu") != "gelu":
        return f"its hidden_act is {config.get('hidden_act')!r}, not 'gelu'"
    if config.get("position_embedding_type", "absolute") != "absolute":
        return "its position embeddings are not absolute"
    if config.get("is_decoder") or config.get("add_cross_attention"):
        return "it is a decoder"
    try:
        sizes = BertConfig.of(config)
    except (KeyError, TypeError, ValueError) as exc:
        return f"its config.json lacks a size ({exc})"
    if sizes.hidden_size % sizes.num_attention_heads:
        return "its hidden size is not a multiple of its heads"
    return ""


def _tokenizer_problem(folder: Path) -> str:
    """Whether tokenizer.json alone tokenizes as transformers' BertTokenizer
    does: transformers rebuilds the normalizer from tokenizer_config.json,
    so the two must agree."""
    spec, options = _json(folder / "tokenizer.json"), _json(folder / "tokenizer_config.json")
    if not spec:
        return "it has no tokenizer.json"
    if options.get("tokenizer_class") not in (None, "BertTokenizer", "BertTokenizerFast"):
        return f"its tokenizer is {options.get('tokenizer_class')}"
    normalizer = {"type": "BertNormalizer", "clean_text": True,
                  "handle_chinese_chars": options.get("tokenize_chinese_chars", True),
                  "strip_accents": options.get("strip_accents"),
                  "lowercase": options.get("do_lower_case", True)}  # fmt: skip
    model = spec.get("model") or {}
    if (
        spec.get("normalizer") != normalizer
        or spec.get("pre_tokenizer") != {"type": "BertPreTokenizer"}
        or model.get("type") != "WordPiece"
        or model.get("unk_token") != options.get("unk_token", "[UNK]")
        or model.get("continuing_subword_prefix") != "##"
        or model.get("max_input_chars_per_word") != 100
        or options.get("truncation_side", "right") != "right"
    ):
        return "its tokenizer.json differs from the BertTokenizer its tokenizer_config.json builds"
    vocab = model.get("vocab") or {}
    if any(
        not t.get("special") or vocab.get(t["content"]) != t["id"]
        for t in spec.get("added_tokens", [])
    ):
        return "its tokenizer adds tokens beyond its vocabulary"
    return ""


def checkpoint_names(names: Sequence[str]) -> dict[str, str]:
    """The checkpoint's names of the tensors the encoder uses, by the
    encoder's name: a "bert." prefix (a checkpoint saved with a head) is
    dropped, the unused tensors left out."""
    prefix = "bert." if names and all(n.startswith("bert.") for n in names) else ""
    kept = {n[len(prefix) :]: n for n in names}
    return {k: n for k, n in kept.items() if not k.startswith(_UNUSED)}


def _weights_problem(folder: Path, sizes: BertConfig) -> str:
    from safetensors import safe_open

    found = folder / "model.safetensors"
    if not found.is_file():
        return "it has no model.safetensors"
    try:  # the header alone: names and shapes, no tensor read
        with safe_open(str(found), framework="numpy") as weights:
            names = checkpoint_names(list(weights.keys()))
            shapes = {k: tuple(weights.get_slice(n).get_shape()) for k, n in names.items()}
    except Exception as exc:  # safetensors raises its own kinds on a bad file
        return f"its model.safetensors is unreadable ({exc})"
    expected = sizes.tensors()
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in expected if k in shapes and shapes[k] != expected[k])
    if missing or unexpected or wrong:
        return (
            f"its model.safetensors does not hold a BERT encoder of its config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {wrong[:3]})"
        )
    return ""


def bert_problem(folder: Path) -> str:
    """Why `BertEmbedder` would not reproduce transformers' vectors and
    token ids for `folder` (another architecture, an option of BERT's not
    written here, a tokenizer that transformers would rebuild otherwise,
    tensors missing or left over), or "" when it does."""
    config = _json(folder / "config.json")
    problem = _config_problem(config) or _tokenizer_problem(folder)
    return problem or _weights_problem(folder, BertConfig.of(config))


# The three kinds of layer, with weights left uninitialised for the
# checkpoint to fill: torch's own (nn.Linear, ...) draw random weights first,
# and building them on the meta device instead imports torch._dynamo; either
# costs more than the rest of the load.
class _Linear(nn.Module):
    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(outputs, inputs), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(outputs), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.linear(x, self.weight, self.bias)


class _LayerNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(size), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class _Embedding(nn.Module):
    def __init__(self, rows: int, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, size), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return functional.embedding(ids, self.weight)


class _Layer(nn.Module):
    """One encoder layer: self-attention, then the feed-forward, each added
    to its input and layer-normalised after (BERT's post-LayerNorm)."""

    def __init__(self, sizes: BertConfig) -> None:
        super().__init__()
        h, inner, eps = sizes.hidden_size, sizes.intermediate_size, sizes.layer_norm_eps
        self.heads = sizes.num_attention_heads
        # Submodules named as transformers names them, so the checkpoint's
        # state dict loads as it is.
        projections = {name: _Linear(h, h) for name in ("query", "key", "value")}
        self.attention = nn.ModuleDict({
            "self": nn.ModuleDict(projections),
            "output": nn.ModuleDict({"dense": _Linear(h, h), "LayerNorm": _LayerNorm(h, eps)}),
        })  # fmt: skip
        self.intermediate = nn.ModuleDict({"dense": _Linear(h, inner)})
        self.output = nn.ModuleDict({"dense": _Linear(inner, h), "LayerNorm": _LayerNorm(h, eps)})

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        rows, width, hidden = x.shape
        attention: Any = self.attention
        q, k, v = (
            attention["self"][name](x).view(rows, width, self.heads, -1).transpose(1, 2)
            for name in ("query", "key", "value")
        )
        context = functional.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        context = context.transpose(1, 2).reshape(rows, width, hidden)
        x = attention["output"]["LayerNorm"](x + attention["output"]["dense"](context))
        inner = functional.gelu(self.intermediate["dense"](x))  # exact (erf), as "gelu"
        return self.output["LayerNorm"](x + self.output["dense"](inner))  # type: ignore[no-any-return]


class BertEncoder(nn.Module):
    """BERT's encoder (transformers' BertModel without the pooler): token
    ids and their padding mask in, one vector per token out."""

    def __init__(self, sizes: BertConfig) -> None:
        super().__init__()
        h = sizes.hidden_size
        self.embeddings = nn.ModuleDict({
            "word_embeddings": _Embedding(sizes.vocab_size, h),
            "position_embeddings": _Embedding(sizes.max_position_embeddings, h),
            "token_type_embeddings": _Embedding(sizes.type_vocab_size, h),
            "LayerNorm": _LayerNorm(h, sizes.layer_norm_eps),
        })  # fmt: skip
        layers = nn.ModuleList(_Layer(sizes) for _ in range(sizes.num_hidden_layers))
        self.encoder = nn.ModuleDict({"layer": layers})

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        embed: Any = self.embeddings
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        x = (
            embed["word_embeddings"](input_ids)
            + embed["position_embeddings"](positions)
            + embed["token_type_embeddings"](types)
        )
        x = embed["LayerNorm"](x)
        # Every query attends to its row's real tokens only (True: attend).
        keep = attention_mask.bool()[:, None, None, :]
        layers: Any = self.encoder["layer"]
        for layer in layers:
            x = layer(x, keep)
        return x


def load_encoder(folder: Path, sizes: BertConfig) -> BertEncoder:
    """The encoder with the folder's model.safetensors, in float32: the
    loaded tensors take the place of the empty ones (`assign`), and
    `load_state_dict` checks every name and shape."""
    from safetensors.torch import load_file

    stored = load_file(str(folder / "model.safetensors"))
    state = {k: stored[n].to(torch.float32) for k, n in checkpoint_names(list(stored)).items()}
    model = BertEncoder(sizes)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


class BertEmbedder(TorchEmbedder):
    """A model folder that `plan_of` reads and `bert_problem` passes, on the
    encoder above: the same device, precision, batching and pooling as
    `rag.embedding_hf.TransformersEmbedder`, and its vectors. A folder that
    does not pass is a `ModelMissing` saying why (`load_embedder` sends such
    folders to transformers instead)."""

    def __init__(
        self,
        name: str,
        precision: Precision = "auto",
        device: str = "cpu",
        plan: Plan | None = None,
    ) -> None:
        self._place(precision, device)
        found = plan or _plan(name)
        problem = found if isinstance(found, str) else bert_problem(found.folder)
        if isinstance(found, str) or problem:
            raise NotPlainBert(
                f"Embedding model {name!r} cannot run on the plain BERT encoder: {problem}."
            )
        config = _json(found.folder / "config.json")
        sizes = BertConfig.of(config)
        try:
            model = load_encoder(found.folder, sizes)
        except Exception as exc:  # safetensors and torch raise many kinds here
            raise _unavailable(name, exc) from exc
        self._model = model.to(self.device).to(getattr(torch, self.precision))
        self.plan = found
        self.pooling: Pooling = found.pooling
        self.model_id = canonical_model_id(name)
        self.dimension = found.dimension
        # The window as transformers' route takes it: sentence-transformers'
        # setting, else the smaller of the positions and the tokenizer's limit.
        options = _json(found.folder / "tokenizer_config.json")
        limit = int(options.get("model_max_length") or sizes.max_position_embeddings)
        self.max_length = found.max_length or min(sizes.max_position_embeddings, limit)
        self._tokens = TokenCounter(name, found.folder, self.max_length)
        self.max_tokens = self._tokens.max_tokens
        pad = options.get("pad_token", "[PAD]")
        self._pad_id = self._tokens.token_id(pad["content"] if isinstance(pad, dict) else pad) or 0
        self._token_types = True
        self._hf_tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        """transformers' tokenizer for the folder, loaded on first use (it
        imports transformers): for comparisons, never used to embed."""
        if self._hf_tokenizer is None:
            from transformers import AutoTokenizer

            self._hf_tokenizer = AutoTokenizer.from_pretrained(
                str(self.plan.folder), local_files_only=True
            )
        return self._hf_tokenizer

    def count_tokens(self, text: str) -> int:
        return self._tokens.count_tokens(text)

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Token ids of `texts` as the model reads them (`TokenCounter.encode`)."""
        return self._tokens.encode([str(t) for t in texts])

    def _pooled(self, features: dict[str, Any]) -> Any:
        return pool(self._model(**features), features["attention_mask"], self.pooling)

    def embed_batch(self, texts: Sequence[str], kind: Kind = "document") -> np.ndarray:
        """As `TransformersEmbedder.embed_batch`: tokenized as sentence-
        transformers tokenizes, embedded as `embed_token_ids` embeds;
        queries and documents alike (`plan_of` admits no prompt)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self.embed_token_ids(self.encode(texts), max_rows=TEXT_BATCH)


def _plan(name: str) -> Plan | str:
    folder = model_folder(name)
    return plan_of(folder) if folder is not None else f"{name} is not on disk"
