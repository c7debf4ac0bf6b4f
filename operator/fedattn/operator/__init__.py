"""The Kubernetes operator: kopf handlers (``handlers``) over pure builders (``builders``, ``status``),
Kubernetes calls (``kube``), session PKI in Secrets (``credentials``), coordinator status (``progress``),
RBAC rules (``rbac.yaml``) and the ``fedattn operator`` process (``command``)."""
