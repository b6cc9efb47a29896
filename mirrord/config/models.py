"""pydantic models of the mirrord configuration file (upstream schema, release 3.250.0).

Sections we act on (target, feature.env, feature.hostname, agent timeouts) have precise
models with helpers for the code that uses them. Sections we do not build yet are modelled
closely enough that a typo or a wrong type is an error, never silently ignored.

Conventions, chosen for error messages that a person can read:
- every model forbids unknown keys and is strict (`"30"` is not a number, as upstream);
- a key that takes several shapes (`true`, `"steal"`, `{...}`) is a union tagged by the
  Python type of the input (`shape_tag`), so only the matching shape is checked and its
  errors are reported; the tags start with `~` and are dropped from error paths.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    model_validator,
)
from pydantic_core import PydanticCustomError

# --- building blocks -----------------------------------------------------------------------


class Model(BaseModel):
    """Base of every config section: strict types, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class OpenModel(BaseModel):
    """Kubernetes objects upstream passes through: extra keys are the API server's business."""

    model_config = ConfigDict(extra="allow", strict=True)


TAG_PREFIX = "~"


def shape_tag(value: Any) -> str | None:
    """Tag of an input by its shape; None (no branch) for shapes no union here accepts."""
    if isinstance(value, bool):
        return "~bool"
    if isinstance(value, int):
        return "~int"
    if isinstance(value, str):
        return "~str"
    if isinstance(value, dict | BaseModel):
        return "~obj"
    if isinstance(value, list):
        return "~list"
    return None


def by_shape(expected: str) -> Discriminator:
    """Discriminator choosing a union branch by input shape, with a readable error."""
    return Discriminator(shape_tag, custom_error_type="wrong_shape", custom_error_message=expected)


U16 = Annotated[int, Field(ge=0, le=65535)]
U32 = Annotated[int, Field(ge=0, le=4294967295)]
U64 = Annotated[int, Field(ge=0, le=18446744073709551615)]
Port = U16
PortPair = Annotated[list[U16], Field(min_length=2, max_length=2)]
StrMap = dict[str, str]

# A string or a list of strings (upstream `VecOrSingle`); a single string may hold several
# values separated by `;` where the key says so (env include/exclude/unset).
VecOrSingle = Annotated[
    Annotated[str, Tag("~str")] | Annotated[list[str], Tag("~list")],
    by_shape("expected a string or a list of strings"),
]
PortOrPorts = Annotated[
    Annotated[U16, Tag("~int")] | Annotated[list[U16], Tag("~list")],
    by_shape("expected a port number or a list of port numbers"),
]


def as_list(value: str | list[str] | None, *, split: bool = False) -> list[str]:
    """The values of a `VecOrSingle`; `split` also splits a single string on `;`."""
    if value is None:
        return []
    if isinstance(value, str):
        parts = value.split(";") if split else [value]
        return [part.strip() for part in parts if part.strip()]
    return list(value)


# --- target --------------------------------------------------------------------------------

# Kinds of the string form `KIND/NAME[/container/CONTAINER]`, with upstream's abbreviation.
TARGET_KINDS: dict[str, str] = {
    "pod": "pod",
    "deployment": "deployment",
    "deploy": "deployment",
    "rollout": "rollout",
    "job": "job",
    "cronjob": "cronjob",
    "statefulset": "statefulset",
    "service": "service",
    "replicaset": "replicaset",
}
_TARGET_FORMS = (
    'expected "targetless", "pid/PID", or KIND/NAME[/container/CONTAINER] with KIND one of '
    + ", ".join(sorted(set(TARGET_KINDS.values())))
)


def _check_target_string(text: str) -> str:
    """Validate and normalize a target string (`deploy/x` becomes `deployment/x`)."""
    if text == "targetless":
        return text
    parts = text.split("/")
    kind = parts[0]
    if kind == "pid":
        # Our extension: a process on this host, by PID.
        if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) > 0:
            return text
        raise PydanticCustomError("target", "a local process target is pid/PID, e.g. pid/4242")
    if kind not in TARGET_KINDS or len(parts) not in (2, 4) or not parts[1]:
        raise PydanticCustomError("target", f"{text!r}: {_TARGET_FORMS}")
    if len(parts) == 4 and (parts[2] != "container" or not parts[3]):
        raise PydanticCustomError("target", f"{text!r}: {_TARGET_FORMS}")
    return "/".join([TARGET_KINDS[kind], *parts[1:]])


TargetString = Annotated[str, AfterValidator(_check_target_string)]


class _WorkloadTarget(Model):
    container: str | None = None


class PodTarget(_WorkloadTarget):
    """A pod by name."""

    pod: str


class DeploymentTarget(_WorkloadTarget):
    """A deployment; one of its ready pods is used."""

    deployment: str


class RolloutTarget(_WorkloadTarget):
    """An Argo rollout."""

    rollout: str


class JobTarget(_WorkloadTarget):
    """A job."""

    job: str


class CronJobTarget(_WorkloadTarget):
    """A cron job."""

    cron_job: str


class StatefulSetTarget(_WorkloadTarget):
    """A stateful set."""

    stateful_set: str


class ServiceTarget(_WorkloadTarget):
    """A service; one of the pods behind it is used."""

    service: str


class ReplicaSetTarget(_WorkloadTarget):
    """A replica set."""

    replica_set: str


class LabelTarget(_WorkloadTarget):
    """Pods selected by labels."""

    labels: StrMap


# Object key naming each kind, and the kind's name in the string form.
_OBJECT_KINDS: dict[str, str] = {
    "deployment": "deployment",
    "pod": "pod",
    "rollout": "rollout",
    "job": "job",
    "cron_job": "cronjob",
    "stateful_set": "statefulset",
    "service": "service",
    "replica_set": "replicaset",
    "labels": "labels",
}


def _target_tag(value: Any) -> str | None:
    if isinstance(value, str):
        return "~str"
    if isinstance(value, BaseModel):
        for key in _OBJECT_KINDS:
            if key in type(value).model_fields:
                return key
    if isinstance(value, dict):
        for key in _OBJECT_KINDS:
            if key in value:
                return key
    return None


TargetPath = Annotated[
    Annotated[TargetString, Tag("~str")]
    | Annotated[DeploymentTarget, Tag("deployment")]
    | Annotated[PodTarget, Tag("pod")]
    | Annotated[RolloutTarget, Tag("rollout")]
    | Annotated[JobTarget, Tag("job")]
    | Annotated[CronJobTarget, Tag("cron_job")]
    | Annotated[StatefulSetTarget, Tag("stateful_set")]
    | Annotated[ServiceTarget, Tag("service")]
    | Annotated[ReplicaSetTarget, Tag("replica_set")]
    | Annotated[LabelTarget, Tag("labels")],
    Discriminator(
        _target_tag,
        custom_error_type="wrong_shape",
        custom_error_message=(
            f"{_TARGET_FORMS}; or an object with one of the keys "
            + ", ".join(_OBJECT_KINDS)
            + " (and optionally container)"
        ),
    ),
]


class TargetConfig(Model):
    """What to run "inside": a pod or workload, a local process (`pid/N`), or nothing."""

    path: TargetPath | None = Field(default=None, description="The target; none: targetless.")
    namespace: str | None = Field(default=None, description="Namespace of the target.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # `target` may be the path itself: a string, or an object naming a kind.
        if isinstance(data, str) or data is None:
            return {"path": data}
        if isinstance(data, dict) and _target_tag(data) is not None:
            return {"path": data}
        return data

    @property
    def path_string(self) -> str | None:
        """The target as `KIND/NAME[/container/C]` or `pid/N`; None when targetless."""
        path = self.path
        if path is None or path == "targetless":
            return None
        if isinstance(path, str):
            return path
        if isinstance(path, LabelTarget):
            text = "labels/" + ",".join(f"{k}={v}" for k, v in sorted(path.labels.items()))
        else:
            key = next(k for k in _OBJECT_KINDS if k in type(path).model_fields)
            text = f"{_OBJECT_KINDS[key]}/{getattr(path, key)}"
        if path.container:
            text += f"/container/{path.container}"
        return text

    @property
    def kind(self) -> str | None:
        """`pod`, `deployment`, ..., `pid`, `labels`; None when targetless."""
        text = self.path_string
        return None if text is None else text.split("/", 1)[0]

    @property
    def name(self) -> str | None:
        """Name of the pod/workload, or the PID as text; None when targetless."""
        text = self.path_string
        return None if text is None else text.split("/")[1]

    @property
    def container(self) -> str | None:
        """The container named in the target, if any."""
        text = self.path_string
        if text is None:
            return None
        parts = text.split("/")
        return parts[3] if len(parts) == 4 else None


# --- feature.env ---------------------------------------------------------------------------


class EnvConfig(Model):
    """Which of the target's environment variables the program gets, and local changes."""

    include: VecOrSingle | None = Field(
        default=None, description="Only these remote variables (`;`-separated, `*`/`?`)."
    )
    exclude: VecOrSingle | None = Field(
        default=None, description="All remote variables but these (`;`-separated, `*`/`?`)."
    )
    override: StrMap | None = Field(default=None, description="Variables set to these values.")
    env_file: str | None = Field(default=None, description="A .env file applied on top.")
    unset: VecOrSingle | None = Field(
        default=None, description="Variables removed (names compared ignoring case)."
    )
    load_from_process: bool | None = Field(default=None, description="Upstream only; ignored.")
    mapping: StrMap | None = Field(
        default=None, description="Regex on a name -> value given to matching variables."
    )

    @model_validator(mode="after")
    def _consistent(self) -> EnvConfig:
        if self.include is not None and self.exclude is not None:
            # Upstream refuses this combination too: the two filters contradict.
            raise PydanticCustomError(
                "env_conflict", "include and exclude cannot both be set; use one of them"
            )
        for pattern in self.mapping or {}:
            try:
                re.compile(pattern)
            except re.error as error:
                raise PydanticCustomError(
                    "bad_regex",
                    "mapping key `{pattern}` is not a valid regex: {error}",
                    {"pattern": pattern, "error": str(error)},
                ) from None
        return self

    @property
    def include_list(self) -> list[str]:
        """`include` as a list of patterns (a string is split on `;`)."""
        return as_list(self.include, split=True)

    @property
    def exclude_list(self) -> list[str]:
        """`exclude` as a list of patterns (a string is split on `;`)."""
        return as_list(self.exclude, split=True)

    @property
    def unset_list(self) -> list[str]:
        """`unset` as a list of names (a string is split on `;`)."""
        return as_list(self.unset, split=True)


# --- feature.fs ----------------------------------------------------------------------------

FsMode = Literal["local", "localwithoverrides", "read", "write"]


class FsConfig(Model):
    """Which file paths are opened on the target, by regex rules."""

    mode: FsMode | None = None
    read_write: VecOrSingle | None = None
    read_only: VecOrSingle | None = None
    local: VecOrSingle | None = None
    not_found: VecOrSingle | None = None
    mapping: StrMap | None = None
    readonly_file_buffer: U64 | None = None


FsSetting = Annotated[
    Annotated[bool, Tag("~bool")]
    | Annotated[FsMode, Tag("~str")]
    | Annotated[FsConfig, Tag("~obj")],
    by_shape("expected true, false, one of local, localwithoverrides, read, write, or an object"),
]


# --- feature.network -----------------------------------------------------------------------

IncomingMode = Literal["mirror", "steal", "off"]


class BodyFilter(Model):
    """Match a JSON body by a query."""

    body: Literal["json"]
    query: str
    matches: str


class InnerFilter(Model):
    """One condition of `all_of`/`any_of`: exactly one of header, path, method, query, body."""

    header: str | None = None
    path: str | None = None
    method: str | None = None
    query: str | None = None
    body: Literal["json"] | None = None
    matches: str | None = None

    @model_validator(mode="after")
    def _one_form(self) -> InnerFilter:
        if self.body is not None:
            if self.query is None or self.matches is None or self.header or self.path:
                raise PydanticCustomError("filter", "a body filter needs body, query and matches")
            return self
        set_keys = [k for k in ("header", "path", "method", "query") if getattr(self, k)]
        if len(set_keys) != 1 or self.matches is not None:
            raise PydanticCustomError(
                "filter", "expected exactly one of header, path, method, query, or a body filter"
            )
        return self


# The kinds of an HTTP filter, one of which a filter sets (upstream's http_filter).
HTTP_FILTER_KINDS = ("header_filter", "path_filter", "method_filter", "all_of", "any_of")


class HttpFilterConfig(Model):
    """Steal only HTTP requests that match."""

    header_filter: str | None = None
    path_filter: str | None = None
    method_filter: str | None = None
    header_filter_jq: str | None = None
    body_filter: BodyFilter | None = None
    all_of: list[InnerFilter] | None = None
    any_of: list[InnerFilter] | None = None
    ports: PortOrPorts | None = None


class HttpHeaderFilterConfig(Model):
    """Deprecated upstream form of a header filter."""

    filter: str | None = None
    ports: PortOrPorts | None = None


class TlsDelivery(Model):
    """How stolen TLS traffic is handed to the local program."""

    protocol: Literal["tcp", "tls"]
    server_cert: str | None = None
    server_name: str | None = None
    trust_roots: list[str] | None = None


HttpFilterSetting = Annotated[
    Annotated[bool, Tag("~bool")] | Annotated[HttpFilterConfig, Tag("~obj")],
    by_shape("expected true, false or an object"),
]


class IncomingConfig(Model):
    """Traffic arriving at the target's ports."""

    mode: IncomingMode | None = None
    http_filter: HttpFilterSetting | None = None
    http_header_filter: HttpHeaderFilterConfig | None = Field(default=None, deprecated=True)
    port_mapping: list[PortPair] | None = None
    listen_ports: list[PortPair] | None = None
    ignore_localhost: bool | None = None
    ignore_ports: list[Port] | None = None
    ports: list[Port] | None = None
    on_concurrent_steal: Literal["override", "continue", "abort"] | None = None
    https_delivery: TlsDelivery | None = None
    tls_delivery: TlsDelivery | None = None


IncomingSetting = Annotated[
    Annotated[bool, Tag("~bool")]
    | Annotated[IncomingMode, Tag("~str")]
    | Annotated[IncomingConfig, Tag("~obj")],
    by_shape("expected true, false, one of mirror, steal, off, or an object"),
]


class _RemoteFilter(Model):
    remote: VecOrSingle | None = None
    local: VecOrSingle | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> _RemoteFilter:
        if (self.remote is None) == (self.local is None):
            raise PydanticCustomError("filter", "expected exactly one of remote or local")
        return self


class OutgoingFilter(_RemoteFilter):
    """Which outgoing connections go through the target (remote) or stay local."""


class DnsFilter(_RemoteFilter):
    """Which names are resolved by the target (remote) or locally."""


class OutgoingConfig(Model):
    """Connections the program makes."""

    tcp: bool | None = None
    udp: bool | None = None
    ignore_localhost: bool | None = None
    filter: OutgoingFilter | None = None
    unix_streams: VecOrSingle | None = None


OutgoingSetting = Annotated[
    Annotated[bool, Tag("~bool")] | Annotated[OutgoingConfig, Tag("~obj")],
    by_shape("expected true, false or an object"),
]


class DnsConfig(Model):
    """Name resolution through the target."""

    enabled: bool | None = None
    filter: DnsFilter | None = None


DnsSetting = Annotated[
    Annotated[bool, Tag("~bool")] | Annotated[DnsConfig, Tag("~obj")],
    by_shape("expected true, false or an object"),
]


class NetworkConfig(Model):
    """Network features."""

    incoming: IncomingSetting | None = None
    outgoing: OutgoingSetting | None = None
    dns: DnsSetting | None = None
    ipv6: bool | None = None


NetworkSetting = Annotated[
    Annotated[bool, Tag("~bool")] | Annotated[NetworkConfig, Tag("~obj")],
    by_shape("expected true, false or an object"),
]


# --- other features (accepted, not built yet) ----------------------------------------------


class CopyTargetConfig(Model):
    """Run against a copy of the target pod."""

    enabled: bool | None = None
    scale_down: bool | None = None
    exclude_containers: list[str] | None = None
    exclude_init_containers: list[str] | None = None


CopyTargetSetting = Annotated[
    Annotated[bool, Tag("~bool")] | Annotated[CopyTargetConfig, Tag("~obj")],
    by_shape("expected true, false or an object"),
]

DbBranchType = Literal[
    "clickhouse",
    "cockroachdb",
    "dynamodb",
    "generic",
    "mariadb",
    "mongodb",
    "mssql",
    "mysql",
    "pg",
    "redis",
    "spanner",
]


class DbBranch(BaseModel):
    """One database branch (operator feature). Only its shape is checked here."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: DbBranchType
    id: str | None = None
    name: str | None = None
    version: str | None = None
    image: str | None = None
    profile: str | None = None
    ttl_secs: U64 | None = None
    ttl_mins: U64 | None = None
    creation_timeout_secs: U64 | None = None


class MagicConfig(Model):
    """Upstream's automatic conveniences."""

    aws: bool | None = None
    auto_mount: bool | None = None
    turbo: bool | None = None


class ConfigMount(OpenModel):
    """A file mounted into a preview pod."""

    mount_at: str
    from_file: str | None = None
    payload: str | None = None
    type: Literal["text", "binary"] | None = None


class PreviewIdleConfig(Model):
    """When a preview environment sleeps."""

    sleep_after_secs: U64 | None = None
    start_idle: bool | None = None
    wake_timeout_secs: U64 | None = None


class PreviewLabelsConfig(Model):
    """Labels copied to a preview environment."""

    include: VecOrSingle | None = None
    exclude: VecOrSingle | None = None


PreviewTtl = Annotated[
    Annotated[U64, Tag("~int")] | Annotated[Literal["infinite"], Tag("~str")],
    by_shape('expected a number of seconds/minutes or "infinite"'),
]


class PreviewConfig(Model):
    """Preview environments (operator feature)."""

    image: str | None = None
    replicas: Annotated[int, Field(ge=-(2**31), le=2**31 - 1)] | None = None
    creation_timeout_secs: U64 | None = None
    ttl_mins: PreviewTtl | None = None
    ttl_secs: PreviewTtl | None = None
    idle: PreviewIdleConfig | None = None
    labels: PreviewLabelsConfig | None = None
    config_mounts: list[ConfigMount] | None = None
    secret_mounts: list[ConfigMount] | None = None


QueueType = Literal[
    "SQS", "Kafka", "RMQ", "GCPPubSub", "RedisPubSub", "AzureServiceBus", "Temporal", "BullMQ"
]


class KafkaPayloadProtobuf(Model):
    """How to decode Kafka payloads for filtering."""

    message_type: str
    descriptor_base64: str | None = None
    include_directories: list[str] | None = None
    schema_file: str | None = None


class QueueSplit(Model):
    """Which queue messages go to the local program (operator feature)."""

    queue_type: QueueType
    queue_mode: Literal["steal", "mirror"] | None = None
    message_filter: StrMap | None = None
    jq_filter: str | None = None
    payload_protobuf: KafkaPayloadProtobuf | None = None


class QueueSplitItem(QueueSplit):
    """A queue split in the list form, naming its queue."""

    queue_id: str


SplitQueues = Annotated[
    Annotated[dict[str, QueueSplit], Tag("~obj")] | Annotated[list[QueueSplitItem], Tag("~list")],
    by_shape("expected an object of queue names, or a list"),
]


class FeatureConfig(Model):
    """What of the target the program sees."""

    env: (
        Annotated[
            Annotated[bool, Tag("~bool")] | Annotated[EnvConfig, Tag("~obj")],
            by_shape("expected true, false or an object"),
        ]
        | None
    ) = Field(default=None, description="The target's environment variables (default: on).")
    fs: FsSetting | None = None
    network: NetworkSetting | None = None
    hostname: bool | None = Field(
        default=None, description="uname()/hostname report the target's hostname (default: on)."
    )
    copy_target: CopyTargetSetting | None = None
    db_branches: list[DbBranch] | None = None
    magic: MagicConfig | None = None
    preview: PreviewConfig | None = None
    split_queues: SplitQueues | None = None

    @property
    def env_enabled(self) -> bool:
        """Whether the target's environment is used at all (upstream default: yes)."""
        return self.env is not False

    @property
    def env_config(self) -> EnvConfig:
        """The env settings, defaults filled in (also for `true` or unset)."""
        return self.env if isinstance(self.env, EnvConfig) else EnvConfig()

    @property
    def hostname_enabled(self) -> bool:
        """Whether uname() reports the target's hostname (upstream default: yes)."""
        return self.hostname is not False

    @property
    def fs_mode(self) -> FsMode:
        """The effective file-system mode (upstream defaults: unset/true = read)."""
        fs = self.fs
        if fs is False:
            return "local"
        if isinstance(fs, str):
            return fs
        if isinstance(fs, FsConfig) and fs.mode is not None:
            return fs.mode
        return "read"

    @property
    def network_config(self) -> NetworkConfig:
        """The network settings, defaults filled in (for `true` or unset; check `network is
        False` or the effective values below for "off")."""
        return self.network if isinstance(self.network, NetworkConfig) else NetworkConfig()

    @property
    def dns_enabled(self) -> bool:
        """Whether names are resolved by the target (upstream default: yes)."""
        if self.network is False:
            return False
        dns = self.network_config.dns
        return dns is not False and not (isinstance(dns, DnsConfig) and dns.enabled is False)

    @property
    def incoming_mode(self) -> IncomingMode:
        """The effective incoming-traffic mode (upstream default: mirror)."""
        if self.network is False:
            return "off"
        incoming = self.network_config.incoming
        if incoming is False:
            return "off"
        if isinstance(incoming, str):
            return incoming
        if isinstance(incoming, IncomingConfig) and incoming.mode is not None:
            return incoming.mode
        return "mirror"


# --- agent ---------------------------------------------------------------------------------


class AgentImage(Model):
    """The agent image as registry and tag."""

    registry: str | None = None
    tag: str | None = None


AgentImageSetting = Annotated[
    Annotated[str, Tag("~str")] | Annotated[AgentImage, Tag("~obj")],
    by_shape("expected an image reference string or an object with registry and tag"),
]


class AgentPullSecret(Model):
    """An image pull secret by name."""

    name: str


class AgentDns(Model):
    """The agent's resolver settings."""

    attempts: U32 | None = None
    timeout: U32 | None = None


class SecurityProfile(Model):
    """A seccomp or AppArmor profile."""

    type: str
    localhost_profile: str | None = None


class SecurityContext(Model):
    """Security profiles of the agent container."""

    app_armor_profile: SecurityProfile | None = None
    seccomp_profile: SecurityProfile | None = None


class Toleration(OpenModel):
    """A Kubernetes toleration."""

    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None
    tolerationSeconds: int | None = None


class ResourceClaim(OpenModel):
    """A Kubernetes resource claim."""

    name: str
    request: str | None = None


Quantity = Annotated[
    Annotated[int, Tag("~int")] | Annotated[str, Tag("~str")],
    by_shape('expected a quantity such as 1, "500m" or "128Mi"'),
]


class ResourceRequirements(OpenModel):
    """Kubernetes resource requests and limits."""

    requests: dict[str, Quantity] | None = None
    limits: dict[str, Quantity] | None = None
    claims: list[ResourceClaim] | None = None


class AgentConfig(Model):
    """The agent that acts inside the target's namespaces."""

    namespace: str | None = None
    image: AgentImageSetting | None = None
    image_pull_policy: str | None = None
    image_pull_secrets: list[AgentPullSecret] | None = None
    log_level: str | None = None
    json_log: bool | None = None
    ttl: U16 | None = None
    ephemeral: bool | None = None
    privileged: bool | None = None
    startup_timeout: U64 | None = Field(
        default=None, description="Seconds to wait for the agent to start (default 60)."
    )
    communication_timeout: U16 | None = Field(
        default=None, description="Seconds to wait for an answer from the agent (default 30)."
    )
    nftables: bool | None = None
    tolerations: list[Toleration] | None = None
    node_selector: StrMap | None = None
    resources: ResourceRequirements | None = None
    labels: StrMap | None = None
    annotations: StrMap | None = None
    service_account: str | None = None
    priority_class: str | None = None
    security_context: SecurityContext | None = None
    disabled_capabilities: list[str] | None = None
    dns: AgentDns | None = None
    check_out_of_pods: bool | None = None
    clean_iptables_on_start: bool | None = None
    disable_mesh_sidecar_injection: bool | None = None
    exclude_from_mesh: bool | None = None
    external_ip_fix: bool | None = None
    flush_connections: bool | None = None
    http_detection_timeout: U64 | None = None
    inject_headers: bool | None = None
    jaq_time_limit: U64 | None = None
    max_body_buffer_size: U32 | None = None
    max_body_buffer_timeout: U32 | None = None
    metrics: str | None = None
    override_cache_control: bool | None = None
    pause: bool | None = Field(default=None, deprecated=True)
    network_interface: str | None = Field(default=None, deprecated=True)

    @property
    def startup_timeout_s(self) -> int:
        """Seconds to wait for the agent to start (upstream default: 60)."""
        return 60 if self.startup_timeout is None else self.startup_timeout

    @property
    def communication_timeout_s(self) -> int:
        """Seconds to wait for an agent answer (upstream default: 30)."""
        return 30 if self.communication_timeout is None else self.communication_timeout


# --- sections that belong to upstream's own machinery ----------------------------------------


class CiConfig(Model):
    """Upstream `mirrord ci` settings."""

    output_dir: str | None = None


class ContainerConfig(Model):
    """Upstream `mirrord container` settings."""

    cli_image: str | None = None
    cli_image_lib_path: str | None = None
    cli_extra_args: list[str] | None = None
    cli_prevent_cleanup: bool | None = None
    cli_tls_path: str | None = None
    host_gateway_detection: bool | None = None
    override_host_ip: str | None = None
    platform: str | None = None


class LatencyConfig(Model):
    """Artificial delays (upstream experimental)."""

    receive_delay: U64 | None = None
    transmit_delay: U64 | None = None


class ExperimentalConfig(Model):
    """Upstream's experimental switches."""

    applev: dict[str, Any] | None = None
    browser_extension_config: bool | None = None
    disable_reuseaddr: bool | None = None
    dlopen_cgo: bool | None = None
    enable_exec_hooks_linux: bool | None = None
    go_asmcgocall: bool | None = None
    guard_std_fds: bool | None = None
    hide_ipv6_interfaces: bool | None = None
    idle_local_http_connection_timeout: U64 | None = None
    ignore_system_proxy_config: bool | None = None
    latency: LatencyConfig | None = None
    non_blocking_tcp_connect: bool | None = None
    sip_log_destination: str | None = None
    sip_utils: bool | None = None
    tcp_ping4_mock: bool | None = None
    trust_any_certificate: bool | None = None
    use_dev_null: bool | None = None
    vfork_emulation: bool | None = Field(default=None, deprecated=True)
    readlink: bool | None = Field(default=None, deprecated=True)

    @model_validator(mode="after")
    def _applev_empty(self) -> ExperimentalConfig:
        if self.applev:
            raise PydanticCustomError("applev", "applev takes no keys here (expected {})")
        return self


class ProxyConfig(Model):
    """Upstream's proxy process settings."""

    idle_timeout: U64 | None = None
    start_idle_timeout: U64 | None = None
    json_log: bool | None = None
    log_destination: str | None = None
    log_level: str | None = None


class InternalProxyConfig(ProxyConfig):
    """Upstream's internal proxy."""

    ping_interval: U64 | None = None
    process_logging_interval: U64 | None = None
    socket_timeout: U64 | None = None


class ExternalProxyConfig(ProxyConfig):
    """Upstream's external proxy."""

    host_ip: str | None = None
    tls_enable: bool | None = None


class StartupRetryConfig(Model):
    """Retries while connecting at start."""

    max_ms: U64 | None = None
    min_ms: U64 | None = None
    max_retries: U32 | None = None


# --- root ----------------------------------------------------------------------------------


class MirrordConfig(Model):
    """A mirrord configuration file (upstream schema 3.250.0, plus `pid/N` targets)."""

    schema_: str | None = Field(default=None, alias="$schema", description="Editor hint.")
    target: TargetConfig = Field(default_factory=TargetConfig)
    feature: FeatureConfig = Field(default_factory=FeatureConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    kube_context: str | None = Field(default=None, description="kubeconfig context to use.")
    kubeconfig: str | None = Field(default=None, description="Path of the kubeconfig file.")
    accept_invalid_certificates: bool | None = None
    api: bool | None = None
    baggage: str | None = None
    ci: CiConfig | None = None
    container: ContainerConfig | None = None
    experimental: ExperimentalConfig | None = None
    external_proxy: ExternalProxyConfig | None = None
    internal_proxy: InternalProxyConfig | None = None
    key: str | None = None
    multi_cluster: bool | None = None
    operator: bool | None = None
    profile: str | None = None
    sip_binaries: VecOrSingle | None = None
    skip_build_tools: bool | None = None
    skip_extra_build_tools: VecOrSingle | None = None
    skip_processes: VecOrSingle | None = None
    skip_sip: VecOrSingle | None = None
    startup_retry: StartupRetryConfig | None = None
    telemetry: bool | None = None
    traceparent: str | None = None
    use_proxy: bool | None = None
    pause: bool | None = Field(default=None, deprecated=True)
    connect_tcp: str | None = Field(default=None, deprecated=True)

    @model_validator(mode="before")
    @classmethod
    def _null_sections(cls, data: Any) -> Any:
        # `"target": null` etc. mean "defaults", like an absent key.
        if isinstance(data, dict):
            return {
                k: v
                for k, v in data.items()
                if not (v is None and k in ("target", "feature", "agent"))
            }
        return data
