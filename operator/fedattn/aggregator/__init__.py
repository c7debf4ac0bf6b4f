"""The aggregator: a ZMQ ROUTER with CurveZMQ that folds model updates and assembles global KV.

Modules: ``strategy`` (aggregation math, no I/O), ``kv`` (the FedAttn KV union and barrier),
``allowlist`` (Curve keys -> identities, ZAP), ``sessions`` (per-session round state), ``events``
(the queue of ``ctl_event`` pushes), ``metrics`` and ``probes`` (Prometheus and probes), ``server``
(the socket loop), ``client`` (a DEALER helper for peers), ``command`` (``fedattn aggregator``).
"""
