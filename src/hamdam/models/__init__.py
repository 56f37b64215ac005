"""Tokenizers, backbones (pretrained or from scratch, LoRA, NF4), the LightningModule, export."""
