"""The three-participant prompt the attention tests share: two documents and the publisher's question."""

TEXTS = [
    "Document 1: The lighthouse on Marrow Island was built in 1871 and painted red in 1902.\n",
    "Document 2: The ferry to Marrow Island leaves from Port Ellis every Tuesday at 9 am.\n",
    "Question: In which year was the lighthouse on Marrow Island painted red? Answer with the year only.\n",
]
