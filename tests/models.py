"""Small random-weight models of the real families, saved like hub checkpoints (for tests)."""

from __future__ import annotations

from pathlib import Path

TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   image_size=32, patch_size=8)


def save_random_clip(out: Path, seed: int = 0) -> Path:
    """A random CLIPModel with a real CLIP BPE tokenizer and CLIPImageProcessor."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pixdex.demo.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer(model_max_length=32)
    cfg = CLIPConfig(
        text_config={**TINY_TEXT, "vocab_size": len(tok), "max_position_embeddings": 32,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
                     "pad_token_id": tok.pad_token_id},
        vision_config=TINY_VISION, projection_dim=16)
    CLIPModel(cfg).save_pretrained(out)
    proc = CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tok)
    proc.save_pretrained(out)
    return out


# Words the tiny SigLIP tokenizers are trained on / made of (any text still tokenizes via fallbacks).
_TOKENIZER_TEXT = [
    "a photo of a red circle", "a photo of a blue square", "a small green triangle on the left",
    "a large yellow star on the right", "a purple hexagon at the top", "an orange cross at the bottom",
    "a pink circle in the center", "a cyan square", "this is a picture of a shape", "a drawing of two shapes",
]


def _train_sentencepiece(out: Path, vocab_size: int = 64) -> Path:
    """Train a tiny SentencePiece model offline (SigLIP's tokenizer format); returns spiece.model."""
    import io

    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_TOKENIZER_TEXT * 4), model_writer=buf, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        hard_vocab_limit=False, minloglevel=2,
    )
    path = out / "spiece.model"
    out.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def save_random_siglip(out: Path, seed: int = 0) -> Path:
    """A random SiglipModel with a real (tiny, offline-trained) SentencePiece SiglipTokenizer."""
    import tempfile

    import torch
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor, SiglipTokenizer

    torch.manual_seed(seed)
    out = Path(out)
    with tempfile.TemporaryDirectory() as spm_dir:
        tok = SiglipTokenizer(vocab_file=str(_train_sentencepiece(Path(spm_dir))), model_max_length=64)
    cfg = SiglipConfig(
        text_config={**TINY_TEXT, "vocab_size": len(tok), "max_position_embeddings": 64,
                     "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                     "bos_token_id": None},
        vision_config=TINY_VISION)
    SiglipModel(cfg).save_pretrained(out)
    proc = SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                           tokenizer=tok)
    proc.save_pretrained(out)
    return out


def _gemma_style_vocab() -> dict[str, int]:
    """A Gemma-layout BPE vocabulary: specials, the 256 byte-fallback tokens, then single characters."""
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyz0123456789.,'-":
        vocab.setdefault(ch, len(vocab))
    return vocab


def save_random_siglip2(out: Path, seed: int = 0) -> Path:
    """A random Siglip2Model (NaFlex patches) with a Gemma-style Siglip2Tokenizer built from a vocabulary."""
    import torch
    from transformers import (
        Siglip2Config,
        Siglip2ImageProcessor,
        Siglip2Model,
        Siglip2Processor,
        Siglip2Tokenizer,
    )

    torch.manual_seed(seed)
    out = Path(out)
    tok = Siglip2Tokenizer(vocab=_gemma_style_vocab(), merges=[], model_max_length=64)
    # patch 16 / 256 patches like the real naflex checkpoints (Siglip2Processor's call defaults assume them)
    vision = {k: v for k, v in TINY_VISION.items() if k != "image_size"}
    cfg = Siglip2Config(
        text_config={**TINY_TEXT, "vocab_size": len(tok), "max_position_embeddings": 64,
                     "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                     "bos_token_id": tok.bos_token_id},
        vision_config={**vision, "patch_size": 16, "num_patches": 256})
    Siglip2Model(cfg).save_pretrained(out)
    proc = Siglip2Processor(image_processor=Siglip2ImageProcessor(patch_size=16, max_num_patches=256),
                            tokenizer=tok)
    proc.save_pretrained(out)
    return out


def with_logit_params(path: str, log_scale: float, bias: float) -> str:
    """Re-save a SigLIP checkpoint with a non-trivial logit scale and bias (random init leaves 0, 0)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(path)
    with torch.no_grad():
        model.logit_scale.fill_(log_scale)
        model.logit_bias.fill_(bias)
    model.save_pretrained(path)
    return path


def small_siglip_store(tmp_path: Path, shapes_dir: Path, count: int) -> tuple[str, Path]:
    """(model, store): a random SigLIP with logit scale e^2.3 and bias -1.5, and a store of the first
    `count` PNGs of shapes_dir indexed with it."""
    import shutil

    from indexer.job import index_collection

    model = with_logit_params(str(save_random_siglip(tmp_path / "siglip")), 2.3, -1.5)
    images = tmp_path / "few"
    images.mkdir()
    for p in sorted(shapes_dir.glob("*.png"))[:count]:
        shutil.copy(p, images)
    store = tmp_path / "s.pixdex"
    index_collection([str(images)], store, model=model, progress=False, workers=0)
    return model, store
