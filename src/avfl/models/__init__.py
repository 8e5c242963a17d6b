"""Backbones (frozen or fine-tuned), trainable encoders and heads, pretrained-weight loading."""
