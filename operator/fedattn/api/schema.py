"""The FedSession and FedParticipant schemas: the single source of truth for both CRDs.

``crds/*.yaml`` are generated from these (``fedattn crds``), the local runner validates manifests
against them (:func:`fedattn.api.apply_defaults_and_validate`) and docs/resources.md is checked
against them by a test. CEL rules (``x-kubernetes-validations``) carry the cross-field and
immutability rules, so no admission webhook is needed.
"""

from __future__ import annotations

import enum

from fedattn.api.fields import (
    Schema,
    array,
    boolean,
    free_form,
    integer,
    number,
    number_map,
    obj,
    string,
    string_map,
)
from fedattn.api.strategy_params import RULE_PARAMS, Param, Table

GROUP = "fedattn.io"
VERSION = "v1alpha1"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: Identities of a session's own components, never a participant's name: a participant called
#: ``coordinator-client`` would put its key where the control link's is (and get its powers),
#: ``operator`` would be the coordinator's administrator, ``server`` the server certificate's CN;
#: the store files syncs under participant ``*``, which the name pattern already excludes.
RESERVED_NAMES = ("operator", "coordinator-client", "server")

#: Strategy -> its parameter table; the CRD's strategy enum, key check and bounds are built from it.
STRATEGY_PARAMS: dict[str, Table] = RULE_PARAMS

class SessionPhase(enum.StrEnum):
    """FedSession ``status.phase``; str-valued, so status patches and JSON replies stay plain strings."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ParticipantPhase(enum.StrEnum):
    """FedParticipant ``status.phase`` (and the coordinator's per-participant phase)."""

    PENDING = "Pending"
    CREDENTIALED = "Credentialed"
    JOINED = "Joined"
    CONTRIBUTING = "Contributing"
    DONE = "Done"
    FAILED = "Failed"
    EVICTED = "Evicted"


SESSION_PHASES = [p.value for p in SessionPhase]
#: kstatus' three (Ready, Reconciling, Stalled: what Flux, Argo CD and ``kubectl wait`` read), then ours
SESSION_CONDITIONS = [
    "Ready",
    "Reconciling",
    "Stalled",
    "CertificatesReady",
    "QuorumReached",
    "Degraded",
    "Complete",
    "Failed",
]
PARTICIPANT_PHASES = [p.value for p in ParticipantPhase]
PARTICIPANT_CONDITIONS = ["CertificateIssued", "Connected", "Stalled"]
#: Spec fields that define what a session computes: an edit could not take effect on a running session,
#: so the CRD refuses it (CEL) and the operator refuses it where the API server has no CEL (< 1.25).
SESSION_IMMUTABLE = ["mode", "activeDeadlineSeconds", "minParticipants", "rounds", "strategy", "model",
                     "training", "privacy"]  # fmt: skip
PARTICIPANT_IMMUTABLE = ["sessionRef", "weight", "dataRef", "image"]
#: key of the generated text in the attention publisher's output Secret (``status.outputs.text.key``)
OUTPUT_TEXT_KEY = "text"
SYNC_POLICIES = ["uniform", "deep-half", "progressive"]
KV_CODECS = ["float32", "float16", "int8", "int4", "int2"]
HOLDER_SYNC = ["all", "none"]


def immutable_rule(field: str, *, kind: str) -> tuple[str, str]:
    """CEL ``(rule, message)`` keeping ``field`` as it was created (set or unset alike)."""
    rule = f"has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
    return rule, f"{field} is immutable: it defines the run; delete and re-create the {kind} to change it"


def _cel_string_list(items: list[str]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def _strategy_rule() -> str:
    table = ", ".join(f"'{name}': {_cel_string_list(list(keys))}" for name, keys in STRATEGY_PARAMS.items())
    return f"self.params.all(k, k in {{{table}}}[self.name])"


def _cel_bound(key: str, p: Param) -> str:
    value = f"self.params['{key}']"
    checks = []
    if p.minimum is not None:
        checks.append(f"{value} {'>' if p.exclusive_minimum else '>='} {float(p.minimum)!r}")
    if p.maximum is not None:
        checks.append(f"{value} {'<' if p.exclusive_maximum else '<='} {float(p.maximum)!r}")
    return " && ".join(checks)


def _strategy_bound_rules() -> list[tuple[str, str]]:
    """One CEL rule per parameter and interval, over the rules that share it (from the tables)."""
    shared: dict[tuple[str, str], list[str]] = {}
    params: dict[tuple[str, str], Param] = {}
    for name, table in STRATEGY_PARAMS.items():
        for key, p in table.items():
            if p.minimum is None and p.maximum is None:
                continue
            shared.setdefault((key, p.interval()), []).append(name)
            params[key, p.interval()] = p
    rules = []
    for (key, interval), names in shared.items():
        who = f"self.name == '{names[0]}'" if len(names) == 1 else f"self.name in {_cel_string_list(names)}"
        rule = f"!({who}) || !('{key}' in self.params) || ({_cel_bound(key, params[key, interval])})"
        rules.append((rule, f"{key} must be in {interval}"))
    return rules


def _name(description: str) -> Schema:
    return string(description, pattern=NAME_PATTERN, max_length=63, min_length=1)


def _key_ref(description: str) -> Schema:
    return obj(
        description,
        {"name": _name("ConfigMap or Secret name."), "key": string("Key inside it.", min_length=1)},
        required=["name", "key"],
    )


def _data_ref(description: str) -> Schema:
    return obj(
        description,
        {
            "configMapKeyRef": _key_ref("Read the data from this ConfigMap key."),
            "secretKeyRef": _key_ref("Read the data from this Secret key."),
        },
        rules=[
            (
                "has(self.configMapKeyRef) != has(self.secretKeyRef)",
                "set exactly one of configMapKeyRef and secretKeyRef",
            )
        ],
    )


def _resources() -> Schema:
    return free_form("Container resources (requests/limits), as in a Pod spec.")


def _pod_template(component: str) -> Schema:
    return obj(
        f"Pod settings of the session's {component}.",
        {
            "image": string(
                f"Image of the {component}; the operator's default image when empty.", default=""
            ),
            "resources": _resources(),
            "nodeSelector": string_map(f"Node labels the {component} pod must run on."),
            "tolerations": array("Pod tolerations, as in a Pod spec.", free_form("One toleration.")),
        },
        default={},
    )


def _tls() -> Schema:
    return obj(
        "Session PKI: cert-manager issuer or a self-signed CA the operator keeps.",
        {
            "issuerRef": obj(
                "Issue the session's certificates with this cert-manager issuer.",
                {
                    "name": _name("Issuer name."),
                    "kind": string(
                        "Issuer or ClusterIssuer.", default="Issuer", enum=["Issuer", "ClusterIssuer"]
                    ),
                    "group": string("API group of the issuer.", default="cert-manager.io"),
                },
                required=["name"],
            ),
            "selfSigned": obj(
                "The operator keeps a per-session CA in a Secret and issues every certificate itself.",
                {
                    "validityDays": integer("Lifetime of issued certificates, days.", default=365, minimum=1),
                    "renewBeforeDays": integer(
                        "Reissue this many days before expiry.", default=30, minimum=1
                    ),
                },
                rules=[
                    ("self.renewBeforeDays < self.validityDays", "renewBeforeDays must be below validityDays")
                ],
            ),
        },
        default={"selfSigned": {}},
        rules=[
            (
                "has(self.issuerRef) != has(self.selfSigned)",
                "set exactly one of tls.issuerRef and tls.selfSigned",
            )
        ],
    )


def _resilience() -> Schema:
    return obj(
        "Timeouts, retries and circuit breaking of every remote call.",
        {
            "timeoutSeconds": integer("Timeout of one call, seconds.", default=30, minimum=1),
            "retries": integer("Retries after the first attempt.", default=3, minimum=0, maximum=20),
            "backoffSeconds": number("First backoff; doubles per retry, seconds.", default=1, minimum=0),
            "circuitBreaker": obj(
                "Stop calling a failing peer for a while.",
                {
                    "failures": integer("Consecutive failures that open the breaker.", default=5, minimum=1),
                    "openSeconds": integer(
                        "How long the breaker stays open, seconds.", default=60, minimum=1
                    ),
                },
                default={},
            ),
        },
        default={},
    )


def _learning() -> dict[str, Schema]:
    return {
        "rounds": integer("Learning: number of rounds.", default=10, minimum=1, maximum=100000),
        "strategy": obj(
            "Learning: aggregation strategy and its parameters.",
            {
                "name": string("Strategy.", default="fedavg", enum=list(STRATEGY_PARAMS)),
                "params": number_map(
                    "Strategy parameters, e.g. proximalMu, serverLearningRate, trimFraction"
                    " (docs/strategies.md lists each rule's).",
                    default={},
                ),
            },
            default={"name": "fedavg", "params": {}},
            rules=[
                (_strategy_rule(), "strategy.params has a key this strategy does not take"),
                *_strategy_bound_rules(),
            ],
        ),
        "training": obj(
            "Learning: the built-in trainer.",
            {
                "dataset": string("Built-in dataset.", default="digits", enum=["digits"]),
                "testFraction": number(
                    "Held-out share for evaluation.", default=0.25, minimum=0, maximum=0.9
                ),
                "dirichletAlpha": number(
                    "Non-IID split concentration (smaller = more skewed).",
                    default=0.5,
                    minimum=0,
                    exclusive_minimum=True,
                ),
                "seed": integer("Seed of the split and the model init.", default=0, minimum=0),
                "localEpochs": integer("Local epochs per round.", default=1, minimum=1, maximum=1000),
                "batchSize": integer("Local batch size.", default=32, minimum=1),
                "learningRate": number(
                    "Local learning rate.", default=0.1, minimum=0, exclusive_minimum=True
                ),
                "evaluate": boolean(
                    "Evaluate the global model on the held-out split after every round (server side, "
                    "like Flower's evaluate_fn); false skips it, e.g. for transport benchmarks.",
                    default=True,
                ),
            },
            default={},
        ),
        "evaluation": obj(
            "Learning: federated evaluation (off unless set): after a round closes, its contributors "
            "evaluate the new global model on their own held-out data (the client's evaluate); the "
            "example-weighted loss and metrics go into the round's record.",
            {
                "everyRounds": integer(
                    "Evaluate every k-th round (the last round always).", default=1, minimum=1, maximum=100000
                ),
                "timeoutSeconds": integer(
                    "Close the round's evaluation with the answers in after this, seconds.",
                    default=60,
                    minimum=1,
                    maximum=86400,
                ),
            },
        ),
        "output": obj(
            "Learning: where the aggregator writes the final model, the best one, every round's model "
            "(keepEveryRound) as safetensors, and per-round metrics as JSON/CSV (docs/byom.md).",
            {
                "claimName": _name(
                    "PersistentVolumeClaim mounted in the aggregator pod (a cluster); fedattn run writes "
                    "under its run directory (or --output) instead."
                ),
                "subPath": string(
                    "Directory inside the claim; default: the session's name.",
                    pattern=r"^[A-Za-z0-9._-][A-Za-z0-9._/-]*$",
                    max_length=253,
                ),
                "keepEveryRound": boolean("Keep every closed round's model (versions).", default=False),
                "best": obj(
                    "Keep the round's model that scores best on this metric as best.safetensors.",
                    {
                        "metric": string(
                            "A federated-evaluation metric (e.g. accuracy), loss, or the server's accuracy.",
                            min_length=1,
                            max_length=64,
                        ),
                        "mode": string("max or min.", default="max", enum=["max", "min"]),
                    },
                    required=["metric"],
                ),
            },
            rules=[("!has(self.subPath) || !self.subPath.contains('..')", "output.subPath may not contain ..")],
        ),
        "privacy": obj(
            "Learning: differential privacy and secure aggregation (both off unless set).",
            {
                "dp": obj(
                    "Clip each update and add Gaussian noise to the aggregate.",
                    {
                        "mechanism": string("Noise mechanism.", default="gaussian", enum=["gaussian"]),
                        "noiseMultiplier": number("Noise std / clip norm.", default=1.0, minimum=0),
                        "clipNorm": number(
                            "L2 clip of each update.", default=1.0, minimum=0, exclusive_minimum=True
                        ),
                        "targetEpsilon": number(
                            "Stop when this epsilon is spent.",
                            default=10.0,
                            minimum=0,
                            exclusive_minimum=True,
                        ),
                        "delta": number(
                            "DP delta.", default=1e-5, minimum=0, maximum=1, exclusive_minimum=True
                        ),
                    },
                ),
                "secureAggregation": obj(
                    "Pairwise masking so the aggregator only learns the sum.",
                    {
                        "enabled": boolean("Mask updates pairwise.", default=False),
                        "threshold": integer(
                            "Survivors needed to unmask; 0 = minParticipants.", default=0, minimum=0
                        ),
                    },
                ),
            },
        ),
        "compression": obj(
            "Learning: update compression (off unless set).",
            {
                "quantizeBits": integer(
                    "Quantize updates to this many bits (0 = off).", default=8, minimum=0, maximum=16
                ),
                "topK": number(
                    "Send only this share of the largest entries (1 = all).",
                    default=1.0,
                    minimum=0,
                    maximum=1,
                ),
            },
        ),
        "updateLimits": obj(
            "Learning: bounds on what one participant's update may claim and move (FedAvg is not"
            " Byzantine-robust: within these bounds a member still steers the mean; see krum, median,"
            " trimmedmean).",
            {
                "maxExamples": integer(
                    "Largest num_examples an update may claim (its FedAvg weight); above it the update is"
                    " refused.",
                    default=1_000_000,
                    minimum=1,
                ),
                "clipNorm": number(
                    "L2 bound on each update's delta from the global model, clipped without noise"
                    " (unset: no bound; with privacy.dp its own clipNorm applies too).",
                    minimum=0,
                    exclusive_minimum=True,
                ),
            },
            default={},
        ),
        "checkpoint": obj(
            "Learning: aggregator checkpoints.",
            {
                "everyRounds": integer(
                    "Checkpoint every k rounds (0 = never); every round by default, so a restarted aggregator"
                    " resumes where it stopped.",
                    default=1,
                    minimum=0,
                )
            },
            default={},
        ),
        "eviction": obj(
            "Learning: evict participants whose updates keep scoring low (off unless set).",
            {
                "minScore": number("Evict below this score.", default=0.0),
                "afterRounds": integer("Consecutive low rounds before eviction.", default=3, minimum=1),
            },
        ),
    }


def _attention() -> dict[str, Schema]:
    return {
        "syncInterval": integer(
            "Attention: H, layer l syncs when l % H == 0. The default (1, with kvCodec int4) is the "
            "scheme that keeps answers best at 1/8 of exact-sync bytes (docs/fedattn-frontier.md).",
            default=1,
            minimum=1,
            maximum=1024,
        ),
        "syncLayers": array(
            "Attention: explicit sync layers instead of syncInterval.",
            integer("Layer index.", minimum=0),
            max_items=1024,
        ),
        "syncPolicy": string("Attention: sync placement policy instead of syncInterval.", enum=SYNC_POLICIES),
        "kvCodec": string(
            "Attention: K/V format on the wire at a sync. float32 is exact; float16 halves the bytes; "
            "int8/int4/int2 are asymmetric integer codes (keys per channel, values per token, float16 "
            "scales) at about 1/4, 1/8, 1/16 of float32.",
            default="int4",
            enum=KV_CODECS,
        ),
        "holderSync": string(
            "Attention: where document holders (every participant but the publisher) attend to earlier "
            "holders' K/V: at every sync layer (all) or never (none: they only send, and only the "
            "publisher, whose continuation is the answer, listens).",
            default="all",
            enum=HOLDER_SYNC,
        ),
        "kvKeepRatio": number(
            "Attention: share of each participant's tokens sent at a sync (seeded).",
            default=1.0,
            minimum=0,
            maximum=1,
            exclusive_minimum=True,
        ),
        "sharedPrefix": string(
            "Attention: public prefix replicated to every participant, never sent.",
            default="template",
            enum=["none", "sink", "template"],
        ),
        "maxNewTokens": integer("Attention: greedy decode length.", default=32, minimum=1, maximum=4096),
        "publisher": _name(
            "Attention: the participant that holds the question (required in attention mode)."
        ),
        "split": obj(
            "Attention: split one prompt at these token boundaries instead of per-participant prompts.",
            {
                "boundaries": array(
                    "Token indices, increasing.", integer("Token index.", minimum=1), max_items=1024
                )
            },
        ),
    }


def _expose() -> Schema:
    port = "Node port of the {} (type NodePort; allocated by Kubernetes when unset)."
    return obj(
        "How participants outside the cluster (FedParticipant spec.external) reach the coordinator and aggregator.",
        {
            "type": string(
                "Service type of the coordinator and aggregator.",
                default="ClusterIP",
                enum=["ClusterIP", "NodePort", "LoadBalancer"],
            ),
            "addresses": array(
                "Host names or IP addresses outside participants dial (a node's, a load balancer's); added to the"
                " coordinator certificate's names.",
                string("A DNS name or an IP address.", min_length=1, max_length=253),
                max_items=16,
            ),
            "coordinatorNodePort": integer(port.format("coordinator's HTTPS API"), minimum=1, maximum=65535),
            "aggregatorNodePort": integer(port.format("aggregator's ZMQ endpoint"), minimum=1, maximum=65535),
        },
        default={},
        rules=[
            (
                "self.type == 'NodePort' || (!has(self.coordinatorNodePort) && !has(self.aggregatorNodePort))",
                "coordinatorNodePort and aggregatorNodePort need type NodePort",
            )
        ],
    )


def session_spec() -> Schema:
    props: dict[str, Schema] = {
        "mode": string("Kind of session (immutable).", enum=["attention", "learning"]),
        "minParticipants": integer("Quorum to start and to close a round or sync.", default=2, minimum=1),
        "roundTimeoutSeconds": integer(
            "A round or sync barrier gives up after this, seconds.", default=300, minimum=1
        ),
        "waitAfterMinSeconds": integer(
            "Once the quorum contributed, wait this long for the rest.", default=10, minimum=0
        ),
        "startTimeoutSeconds": integer(
            "Fail with NeverStarted when minParticipants are not ready this long after creation, seconds.",
            default=600,
            minimum=1,
        ),
        "suspend": boolean("Scale the session down, keep its state.", default=False),
        "storage": obj(
            "Where the coordinator's store (unless spec.database is set) and the aggregator's checkpoints live.",
            {
                "type": string(
                    "PersistentVolumeClaim survives pod restarts, node drains and suspend; EmptyDir dies with the pod.",
                    default="PersistentVolumeClaim",
                    enum=["PersistentVolumeClaim", "EmptyDir"],
                ),
                "size": string("Size of each claim (coordinator, aggregator).", default="1Gi", min_length=1),
                "storageClassName": string(
                    "Storage class of the claims; the cluster default when unset.", min_length=1
                ),
            },
            default={},
        ),
        "cleanupPolicy": string(
            "When the session finished: ScaleDown stops the coordinator and aggregator and keeps the store and"
            " outputs; Keep leaves them running; Delete also deletes the session's claims.",
            default="ScaleDown",
            enum=["ScaleDown", "Keep", "Delete"],
        ),
        "activeDeadlineSeconds": integer(
            "Fail with DeadlineExceeded after this (immutable), seconds.", minimum=1
        ),
        "ttlSecondsAfterFinished": integer("Delete a finished session after this, seconds.", minimum=0),
        "tls": _tls(),
        "database": obj(
            "PostgreSQL for the coordinator; SQLite inside the pod when unset.",
            {
                "secretRef": obj(
                    "Secret holding the DSN.",
                    {"name": _name("Secret name."), "key": string("Key of the DSN.", default="dsn")},
                    required=["name"],
                )
            },
            required=["secretRef"],
        ),
        "resilience": _resilience(),
        "expose": _expose(),
        "coordinator": _pod_template("coordinator"),
        "aggregator": _pod_template("aggregator"),
        "model": obj(
            "Attention: GGUF model; learning: the model trained.",
            {
                "name": string("Model name (attention: GGUF model; learning: softmax or mlp).", min_length=1),
                "source": string(
                    "Attention: where the GGUF comes from (pypi:PACKAGE or a path).", max_length=1024
                ),
                "hiddenUnits": integer("Learning mlp: hidden units.", default=64, minimum=1, maximum=1048576),
                "initial": obj(
                    "Learning with name client: the initial global model, a .safetensors or .npz file of "
                    "named arrays (docs/byom.md); unset: one participant's get_parameters, as in Flower.",
                    {
                        "path": string(
                            "File path inside spec.output's claim (a cluster) or relative to the manifest's "
                            "directory (fedattn run); e.g. an earlier session's best.safetensors.",
                            min_length=1,
                            max_length=1024,
                        ),
                    },
                    required=["path"],
                ),
            },
            required=["name"],
            rules=[("!has(self.initial) || self.name == 'client'", "model.initial needs model.name client")],
        ),
        **_learning(),
        **_attention(),
    }
    return obj(
        "Desired state of a federated session.",
        props,
        required=["mode"],
        rules=[
            *(immutable_rule(f, kind="FedSession") for f in SESSION_IMMUTABLE),
            ("self.mode != 'attention' || has(self.publisher)", "publisher is required in attention mode"),
            (
                "!(has(self.syncLayers) && has(self.syncPolicy))",
                "set at most one of syncLayers and syncPolicy",
            ),
            (
                "!(has(self.privacy) && has(self.privacy.secureAggregation)"
                " && self.privacy.secureAggregation.enabled"
                " && (has(self.privacy.dp) || (has(self.updateLimits) && has(self.updateLimits.clipNorm))))",
                "secureAggregation hides each update, so privacy.dp and updateLimits.clipNorm cannot clip it:"
                " the epsilon reported would not hold; use one or the other",
            ),
        ],
    )


def _condition() -> Schema:
    return obj(
        "One condition, keyed by type.",
        {
            "type": string("Condition type.", max_length=64),
            "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": string("CamelCase reason.", max_length=128),
            "message": string("Human-readable detail.", max_length=4096),
            "lastTransitionTime": string("When status last changed (RFC 3339).", max_length=64),
            "observedGeneration": integer("Spec generation this condition describes.", minimum=0),
        },
        required=["type", "status"],
    )


def _conditions() -> Schema:
    node = array("Conditions keyed by type.", _condition(), max_items=32)
    node["x-kubernetes-list-type"] = "map"
    node["x-kubernetes-list-map-keys"] = ["type"]
    return node


def session_status() -> Schema:
    return obj(
        "Observed state of a federated session, written by the operator.",
        {
            "phase": string("Phase for humans.", enum=SESSION_PHASES),
            "conditions": _conditions(),
            "observedGeneration": integer("Spec generation last acted on.", minimum=0),
            "round": integer("Current round (learning) or sync count (attention).", minimum=0),
            "participants": obj(
                "Participant counts.",
                {
                    "joined": integer("Joined the session.", minimum=0),
                    "ready": integer("Live and taking part.", minimum=0),
                    "total": integer("FedParticipants of the session.", minimum=0),
                },
            ),
            "syncs": integer("KV syncs done (attention).", minimum=0),
            "avgSyncLatencyMs": number("Mean sync latency, milliseconds.", minimum=0),
            "startedAt": string("When the session started running (RFC 3339).", max_length=64),
            "completedAt": string("When the session finished (RFC 3339).", max_length=64),
            "progress": session_progress(),
            "outputs": session_outputs(),
            "message": string("Last message of the coordinator.", max_length=4096),
        },
    )


def session_progress() -> Schema:
    """``status.progress`` (:func:`fedattn.api.progress.progress` fills it, for the operator and the runner)."""
    return obj(
        "How far the session is, from the coordinator's round log.",
        {
            "round": integer("Rounds closed or open so far.", minimum=0),
            "roundsTotal": integer("Learning: rounds the session runs (spec.rounds).", minimum=0),
            "rounds": string("round/roundsTotal (learning) or 'N syncs' (attention), for kubectl get.", max_length=64),
            "accuracy": number("Held-out accuracy of the global model after the last evaluated round."),
            "loss": number("Mean final local training loss the participants reported as they left."),
            "epsilonSpent": number("Differential privacy epsilon spent so far (learning with privacy.dp).", minimum=0),
            "syncs": integer("Attention: KV syncs done.", minimum=0),
            "lastRoundAt": string("When the last round closed (RFC 3339).", max_length=64),
        },
    )


def session_outputs() -> Schema:
    return obj(
        "Where the session's results are (fedattn results SESSION prints and fetches them).",
        {
            "model": obj(
                "Learning: the final model in the spec.output claim (once finished), or without one the "
                "checkpoint in the aggregator's pod (spec.checkpoint).",
                {
                    "claimName": string("PersistentVolumeClaim holding the file.", max_length=253),
                    "deployment": string("Or: the aggregator Deployment whose pod holds it.", max_length=253),
                    "path": string("Path of the file in the claim, or in that pod.", max_length=1024),
                },
            ),
            "metrics": obj(
                "Learning with spec.output: per-round metrics (JSON) in the claim.",
                {
                    "claimName": string("PersistentVolumeClaim holding the file.", max_length=253),
                    "path": string("Path of the file in the claim.", max_length=1024),
                },
            ),
            "text": obj(
                "Attention: the publisher's generated text, in a Secret its FedParticipant owns.",
                {
                    "secretName": string("Secret name.", max_length=253),
                    "key": string("Key of the text in the Secret.", max_length=253),
                },
            ),
        },
    )




def participant_spec() -> Schema:
    return obj(
        "Desired state of one participant.",
        {
            "sessionRef": _name("FedSession name in the same namespace (immutable)."),
            "external": boolean(
                "Runs outside the cluster: the operator only issues credentials.", default=False
            ),
            "node": string_map("nodeSelector of the in-cluster Job."),
            "weight": number(
                "Aggregation weight multiplier.", default=1.0, minimum=0, exclusive_minimum=True
            ),
            "dataRef": _data_ref("Private training data."),
            "promptRef": _data_ref("Private prompt slice (attention)."),
            "image": string(
                "Image of the participant Job; the operator's default image when empty.", default=""
            ),
            "resources": _resources(),
            "client": obj(
                "Learning: the user's client (docs/byom.md); the built-in digits client when unset.",
                {
                    "module": string(
                        "Factory MODULE:FUNCTION importable in the participant image, called with the "
                        "participant's fedattn.client.Context.",
                        pattern=r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$",
                        max_length=256,
                    ),
                },
                required=["module"],
            ),
            "volumes": array(
                "Pod volumes of the participant (PVC, ConfigMap, Secret, CSI, emptyDir), as in a Pod spec.",
                free_form("One volume."),
                max_items=16,
            ),
            "volumeMounts": array(
                "Where the volumes are mounted; each mount's name and path are handed to the client "
                "factory (Context.volumes).",
                obj(
                    "One volume mount.",
                    {
                        "name": _name("Volume name."),
                        "mountPath": string("Absolute path in the container.", pattern=r"^/", max_length=1024),
                        "subPath": string("Path inside the volume.", max_length=1024),
                        "readOnly": boolean("Mount read-only.", default=True),
                    },
                    required=["name", "mountPath"],
                ),
                max_items=16,
            ),
            "simulation": obj(
                "Testing only: make this participant misbehave on purpose (a bench for robust rules).",
                {
                    "byzantine": string(
                        "signflip: send global - scale * (honest delta) instead of the honest model.",
                        enum=["signflip"],
                    ),
                    "scale": number("Factor of the flipped delta.", default=10.0, minimum=0),
                },
            ),
        },
        required=["sessionRef"],
        rules=[immutable_rule(f, kind="FedParticipant") for f in PARTICIPANT_IMMUTABLE],
    )


def participant_status() -> Schema:
    return obj(
        "Observed state of one participant, written by the operator.",
        {
            "phase": string("Phase for humans.", enum=PARTICIPANT_PHASES),
            "conditions": _conditions(),
            "observedGeneration": integer("Spec generation last acted on.", minimum=0),
            "lastHeartbeat": string("Last heartbeat seen by the coordinator (RFC 3339).", max_length=64),
            "contributions": integer("Contributions recorded.", minimum=0),
            "lastLatencyMs": number("Latency of the last contribution, milliseconds.", minimum=0),
            "credentialsSecret": string(
                "Secret with this participant's certificate and Curve key.", max_length=253
            ),
        },
    )


def reserved_name_rule() -> tuple[str, str]:
    """CEL at a FedParticipant's root (API servers >= 1.25 expose ``self.metadata.name`` there)."""
    return (
        f"!(self.metadata.name in {_cel_string_list(list(RESERVED_NAMES))})",
        f"metadata.name must not be one of {list(RESERVED_NAMES)}: they are the session's own identities",
    )


def root(description: str, *, spec: Schema, status: Schema, rules: list[tuple[str, str]] | None = None) -> Schema:
    cel = {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]} if rules else {}
    return {
        **cel,
        "type": "object",
        "description": description,
        "properties": {
            "apiVersion": {"type": "string", "description": "API version."},
            "kind": {"type": "string", "description": "Kind."},
            # NB: the API server forbids anything but name/generateName constraints under root metadata,
            # a description included ("must not specify anything other than name and generateName").
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "required": ["spec"],
    }
