"""avfl: a reproducible pipeline for audio classification in federated learning with missing video.

Reproduces "ModalityMirror" (Feng, Zhang et al.): data acquisition, middle-frame and
log-mel fbank extraction, client partitioning, federated training of UniFL, MultiFL,
Harmony and ModalityMirror, and the paper's table and figures.
"""

__version__ = "0.1.0"
