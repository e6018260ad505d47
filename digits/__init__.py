"""digits: train, export and benchmark the classic MNIST models."""
__version__ = "0.1.0"
