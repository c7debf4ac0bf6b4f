"""``fedattn results``: a session's progress and outputs, read from the cluster with the user's kubeconfig."""
