"""Kiln: recipes in; guest images, IPA ramdisks, ppc64le RPM rebuilds and CUDA containers out."""

__version__ = "0.1.0"
