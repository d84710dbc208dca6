"""Compiled parts of smctop, each with a pure-Python twin that gives identical results.

* ``smc_opt.bpf.c`` (+ ``smc_tcpopt.h``): a BPF sock_ops program that puts the SMC TCP
  option on the SYN and SYN-ACK of the stack's sockets and records whether the peer's
  carried it; ``smcopt`` loads it and reads its answers; ``tcpopt`` is the twin of its
  option parser and encoder.
* ``softroce/`` (engine.c, module.c): the compiled data path of the soft RoCEv2 provider
  (segmentation and reassembly, ICRC, RC reliability, memory checks, batched system
  calls, completions through an eventfd); ``softroce`` loads it; its twin is the
  pure-Python engine in ``stack/verbs/soft``.
* ``eventenc.c``: the event encoder (one event to its JSON line) and the recorder's spool
  (frames and events into pcapng blocks); ``eventenc`` loads it; its twins are
  ``stack/events.py`` and ``dissectors/spool.py``.

Built by ``native/build.sh`` (run by ``scripts/setup.sh``).
"""
