"""Compiled parts of smctop, each with a pure-Python twin that gives identical results.

* ``smc_opt.bpf.c`` (+ ``smc_tcpopt.h``): a BPF sock_ops program that puts the SMC TCP
  option on the SYN and SYN-ACK of the stack's sockets and records whether the peer's
  carried it; ``smcopt`` loads it and reads its answers; ``tcpopt`` is the twin of its
  option parser and encoder. Built by ``native/build.sh`` (run by ``scripts/setup.sh``).
"""
