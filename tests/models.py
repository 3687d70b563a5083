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
