"""Data stage: raw dataset layouts, the embedded synthetic generator, and feature extraction."""
