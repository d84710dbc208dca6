"""The embedded userspace SMC-R stack of smctop."""
