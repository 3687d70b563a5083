"""Random-weight models with the real architectures (throughput does not depend on weight values)."""

from __future__ import annotations

from pathlib import Path

ARCHS = {
    # openai/clip-vit-base-patch32
    "vit-b-32": dict(kind="clip", text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                                             num_attention_heads=8),
                     vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                 num_attention_heads=12, image_size=224, patch_size=32), projection_dim=512),
    # openai/clip-vit-large-patch14
    "vit-l-14": dict(kind="clip", text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                             num_attention_heads=12),
                     vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                 num_attention_heads=16, image_size=224, patch_size=14), projection_dim=768),
    # google/siglip-base-patch16-224
    "siglip-b-16": dict(kind="siglip",
                        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, max_position_embeddings=64),
                        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                    num_attention_heads=12, image_size=224, patch_size=16)),
}


def save_random(arch: str, out: Path, seed: int = 0) -> Path:
    """Save a random-weight checkpoint of `arch` with a working tokenizer and the real processor settings."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from pixdex.demo.tokenizer import build_tokenizer

    spec = ARCHS[arch]
    torch.manual_seed(seed)
    tok = build_tokenizer(model_max_length=77 if spec["kind"] == "clip" else 64)
    text = {**spec["text"], "vocab_size": len(tok), "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    if spec["kind"] == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=spec["vision"],
                                     projection_dim=spec["projection_dim"]))
        proc = CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tok)
    else:
        from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

        model = SiglipModel(SiglipConfig(text_config=text, vision_config=spec["vision"]))
        proc = CLIPProcessor(image_processor=SiglipImageProcessor(), tokenizer=tok)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out
