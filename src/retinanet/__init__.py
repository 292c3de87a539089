"""retinanet: RetinaNet and the Focal Loss (Lin et al., 2017) in plain PyTorch."""

__version__ = "0.1.0"
