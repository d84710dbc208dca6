"""The capture side of smctop: pcapng writing and reading, smc-trace, the Wireshark plugin."""
