"""FedAttn model side: GGUF loader, tokenizer, numpy Llama forward, reference and per-participant FedAttn.

Everything here runs in one process and never touches the network; the participant's link to the
aggregator plugs in through the ``exchange`` callback of :mod:`fedattn.attention.participant`.
"""
