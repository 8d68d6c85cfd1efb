"""Compression tools shared by the domains: lossless weight coding (ENEC-style), quantization, pruning."""
