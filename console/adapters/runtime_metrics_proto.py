"""libtpu's RuntimeMetricService on the wire: the console's own definitions of its messages.

Names, field numbers and types follow the service as tpu-info speaks it: `tpu_info/proto/
tpu_metric_service.proto` and `tpu_telemetry.proto` in AI-Hypercomputer/cloud-accelerator-
diagnostics (read at fe85c12, tpu-info 0.14.2). They are declared here as a table and built into
descriptors at import time, so nothing needs protoc: not `make`, not a fresh machine, not a VM.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

SERVICE = "tpu.monitoring.runtime.RuntimeMetricService"
GET_RUNTIME_METRIC = f"/{SERVICE}/GetRuntimeMetric"
LIST_SUPPORTED_METRICS = f"/{SERVICE}/ListSupportedMetrics"
GET_TPU_RUNTIME_STATUS = f"/{SERVICE}/GetTpuRuntimeStatus"
DEFAULT_PORT = 8431  # libtpu's, on the VM's loopback (tpu-info's `addr="localhost:8431"`)

# The metric names libtpu defines, as tpu-info's `metrics.MetricName` lists them.
HBM_USAGE = "tpu.runtime.hbm.memory.usage.bytes"
HBM_TOTAL = "tpu.runtime.hbm.memory.total.bytes"
DUTY_CYCLE = "tpu.runtime.tensorcore.dutycycle.percent"
KNOWN_METRICS = (
    HBM_TOTAL,
    HBM_USAGE,
    DUTY_CYCLE,
    "megascale.dcn_transfer_latencies.microsecond.cumulative.distribution",
    "megascale.dcn_inbound_transfer_latencies.microsecond.cumulative.distribution",
    "megascale.host_to_device_transfer_latencies.microsecond.cumulative.distribution",
    "megascale.device_to_host_transfer_latencies.microsecond.cumulative.distribution",
    "megascale.collective_end_to_end_latencies.microsecond.cumulative.distribution",
    "megascale.mxla_compute_latencies.microsecond.cumulative.distribution",
    "megascale.grpc_tcp_min_rtt.microsecond.cumulative.distribution",
    "megascale.grpc_tcp_delivery_rate.Mbps.cumulative.distribution",
    "tpu.runtime.hbm.utilization.percent",
    "tpu.runtime.tensorcore.idle_duration.seconds",
    "hlo.queue.size.gauge",
    "hlo.execution.timing.distribution.microseconds",
)
# The attribute a per-device metric carries its device id in (tpu-info sorts on its int_attr).
DEVICE_ID_KEY = "device-id"

# name, number, type, and "repeated" / "optional" / a oneof's name. A type starting with "."
# names a message or enum; "map<K,.V>" is a proto3 map.
Field = tuple  # (name, number, type[, label_or_oneof])

_TELEMETRY_ENUMS: dict[str, tuple[str, ...]] = {
    "TpuCoreTypeProto": (
        "TPU_CORE_TYPE_INVALID",
        "TPU_CORE_TYPE_TENSOR_CORE",
        "TPU_CORE_TYPE_SPARSE_CORE_V0",
        "TPU_CORE_TYPE_SPARSE_CORE",
    ),
    "TpuSequencerTypeProto": (
        "TPU_SEQUENCER_TYPE_INVALID",
        "TPU_SEQUENCER_TYPE_TENSOR_CORE_SEQUENCER",
        "TPU_SEQUENCER_TYPE_SPARSE_CORE_V0_SEQUENCER",
        "TPU_SEQUENCER_TYPE_SPARSE_CORE_V0_ADDRESS_HANDLER",
        "TPU_SEQUENCER_TYPE_SPARSE_CORE_SEQUENCER",
        "TPU_SEQUENCER_TYPE_SPARSE_CORE_TILE_ACCESS_CORE_SEQUENCER",
        "TPU_SEQUENCER_TYPE_SPARSE_CORE_TILE_EXECUTE_CORE_SEQUENCER",
    ),
}
_T = ".tpu_telemetry."
_TELEMETRY: dict[str, list[Field]] = {
    "TpuCoreOnChipProto": [
        ("type", 1, _T + "TpuCoreTypeProto", "optional"),
        ("index", 2, "int32", "optional"),
    ],
    "TpuCoreIdentifier": [
        ("global_core_id", 1, "int32", "optional"),
        ("chip_id", 2, "int32", "optional"),
        ("core_on_chip", 3, _T + "TpuCoreOnChipProto", "optional"),
    ],
    "QueuedProgramInfo": [
        ("run_id", 1, "int64", "optional"),
        ("launch_id", 2, "int64", "optional"),
        ("program_fingerprint", 3, "bytes", "optional"),
    ],
    "SequencerInfo": [
        ("sequencer_type", 1, _T + "TpuSequencerTypeProto", "optional"),
        ("sequencer_index", 2, "int32", "optional"),
        ("pc", 3, "int64", "optional"),
        ("tag", 4, "int64", "optional"),
        ("tracemark", 5, "int64", "optional"),
        ("program_id", 6, "int64", "optional"),
        ("run_id", 7, "int64", "optional"),
        ("hlo_location", 8, "string", "optional"),
        ("hlo_detailed_info", 9, "string", "optional"),
    ],
    "CurrentCoreStateSummary": [
        ("core_id", 1, _T + "TpuCoreIdentifier", "optional"),
        ("sequencer_info", 2, _T + "SequencerInfo", "repeated"),
        ("xdb_server_running", 3, "bool", "optional"),
        ("program_fingerprint", 4, "bytes", "optional"),
        ("launch_id", 5, "int32", "optional"),
        ("queued_program_info", 6, _T + "QueuedProgramInfo", "repeated"),
        ("error_message", 7, "string", "optional"),
    ],
}

_R = ".tpu.monitoring.runtime."
_TS = ".google.protobuf.Timestamp"
_RUNTIME: dict[str, list[Field]] = {
    "Exemplar": [
        ("value", 1, "double"),
        ("timestamp", 2, _TS),
        ("attributes", 3, _R + "Attribute", "repeated"),
    ],
    # Distribution.BucketOptions' deprecated `regular_buckets` (1) is left out: no libtpu of
    # tpu-info's era sends it, and a field we do not declare still survives as unknown.
    "Distribution.BucketOptions.Exponential": [
        ("num_finite_buckets", 1, "int32"),
        ("growth_factor", 2, "double"),
        ("scale", 3, "double"),
    ],
    "Distribution.BucketOptions.Linear": [
        ("num_finite_buckets", 1, "int32"),
        ("width", 2, "double"),
        ("offset", 3, "double"),
    ],
    "Distribution.BucketOptions.Explicit": [("bounds", 1, "double", "repeated")],
    "Distribution.BucketOptions": [
        ("exponential_buckets", 2, _R + "Distribution.BucketOptions.Exponential", "options"),
        ("explicit_buckets", 3, _R + "Distribution.BucketOptions.Explicit", "options"),
        ("linear_buckets", 4, _R + "Distribution.BucketOptions.Linear", "options"),
    ],
    "Distribution": [
        ("count", 1, "int64"),
        ("mean", 2, "double"),
        ("min", 3, "double"),
        ("max", 4, "double"),
        ("sum_of_squared_deviation", 5, "double"),
        ("bucket_options", 6, _R + "Distribution.BucketOptions"),
        ("bucket_counts", 7, "int64", "repeated"),
        ("exemplars", 8, _R + "Exemplar", "repeated"),
    ],
    "Gauge": [
        ("as_double", 1, "double", "value"),
        ("as_int", 2, "int64", "value"),
        ("as_string", 3, "string", "value"),
        ("as_bool", 4, "bool", "value"),
    ],
    "Counter": [
        ("as_double", 1, "double", "value"),
        ("as_int", 2, "uint64", "value"),
        ("exemplar", 3, _R + "Exemplar"),
    ],
    "Quantile": [("quantile", 1, "double"), ("value", 2, "double")],
    "Summary": [
        ("sample_count", 1, "uint64"),
        ("sample_sum", 2, "double"),
        ("quantile", 3, _R + "Quantile", "repeated"),
    ],
    "AttrValue": [
        ("string_attr", 1, "string", "attr"),
        ("bool_attr", 2, "bool", "attr"),
        ("int_attr", 3, "int64", "attr"),
        ("double_attr", 4, "double", "attr"),
        ("array_attr", 5, _R + "ArrayAttrValue", "attr"),
        ("kvlist_attr", 6, _R + "KeyValueList", "attr"),
        ("bytes_attr", 7, "bytes", "attr"),
    ],
    "ArrayAttrValue": [("attrs", 1, _R + "AttrValue", "repeated")],
    "KeyValueList": [("attributes", 1, _R + "Attribute", "repeated")],
    "Attribute": [("key", 1, "string"), ("value", 2, _R + "AttrValue")],
    "Metric": [
        ("attribute", 1, _R + "Attribute"),
        ("start_timestamp", 7, _TS),
        ("timestamp", 2, _TS),
        ("gauge", 3, _R + "Gauge", "measure"),
        ("counter", 4, _R + "Counter", "measure"),
        ("distribution", 5, _R + "Distribution", "measure"),
        ("summary", 6, _R + "Summary", "measure"),
    ],
    "TPUMetric": [
        ("name", 1, "string"),
        ("description", 2, "string"),
        ("metrics", 3, _R + "Metric", "repeated"),
    ],
    "MetricRequest": [("metric_name", 1, "string"), ("skip_node_aggregation", 2, "bool")],
    "MetricResponse": [("metric", 1, _R + "TPUMetric")],
    "ListSupportedMetricsRequest": [("filter", 1, "string")],
    "SupportedMetric": [("metric_name", 1, "string")],
    "ListSupportedMetricsResponse": [("supported_metric", 1, _R + "SupportedMetric", "repeated")],
    "GetTpuRuntimeStatusRequest": [("include_hlo_info", 1, "bool")],
    "GetTpuRuntimeStatusResponse": [
        ("host_name", 1, "string", "optional"),
        ("core_states", 2, "map<int32," + _T + "CurrentCoreStateSummary>"),
    ],
}

F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": F.TYPE_DOUBLE,
    "int32": F.TYPE_INT32,
    "int64": F.TYPE_INT64,
    "uint64": F.TYPE_UINT64,
    "bool": F.TYPE_BOOL,
    "string": F.TYPE_STRING,
    "bytes": F.TYPE_BYTES,
}
_ENUM_TYPES = {_T + name for name in _TELEMETRY_ENUMS}


def _set_type(field: descriptor_pb2.FieldDescriptorProto, kind: str) -> None:
    if kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type = F.TYPE_ENUM if kind in _ENUM_TYPES else F.TYPE_MESSAGE
        field.type_name = kind


def _message(
    parent: Any, path: list[str], fields: list[Field], owner: str
) -> descriptor_pb2.DescriptorProto:
    """The message at `path` under `parent` (created on first mention), with its fields."""
    container = parent.message_type
    message = None
    for part in path:
        message = next((m for m in container if m.name == part), None)
        if message is None:
            message = container.add(name=part)
        container = message.nested_type
    assert message is not None
    real_oneofs: list[str] = []
    optional: list[descriptor_pb2.FieldDescriptorProto] = []
    for spec in fields:
        name, number, kind = spec[:3]
        label = spec[3] if len(spec) > 3 else ""
        field = message.field.add(name=name, number=number, label=F.LABEL_OPTIONAL)
        if kind.startswith("map<"):
            key, value = kind[4:-1].split(",")
            entry = message.nested_type.add(name=_camel(name) + "Entry")
            entry.options.map_entry = True
            _set_type(entry.field.add(name="key", number=1, label=F.LABEL_OPTIONAL), key)
            _set_type(entry.field.add(name="value", number=2, label=F.LABEL_OPTIONAL), value)
            field.label = F.LABEL_REPEATED
            _set_type(field, f".{owner}.{'.'.join(path)}.{entry.name}")
            continue
        _set_type(field, kind)
        if label == "repeated":
            field.label = F.LABEL_REPEATED
        elif label == "optional":
            optional.append(field)
        elif label:
            if label not in real_oneofs:
                real_oneofs.append(label)
                message.oneof_decl.add(name=label)
            field.oneof_index = real_oneofs.index(label)
    for field in optional:  # proto3 `optional`: a synthetic oneof each, after the real ones
        field.proto3_optional = True
        field.oneof_index = len(message.oneof_decl)
        message.oneof_decl.add(name="_" + field.name)
    return message


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def _file(
    name: str, package: str, messages: dict[str, list[Field]], deps: list[str]
) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    proto.dependency.extend(deps)
    # Parents before children, so a nested message is declared where its parent already is.
    for full in sorted(messages, key=lambda n: n.count(".")):
        _message(proto, full.split("."), messages[full], package)
    return proto


def _build() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()  # our own: no clash with anything else loaded
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(timestamp_pb2.DESCRIPTOR.serialized_pb))
    telemetry = _file("tpuconsole/tpu_telemetry.proto", "tpu_telemetry", _TELEMETRY, [])
    for enum_name, values in _TELEMETRY_ENUMS.items():
        enum = telemetry.enum_type.add(name=enum_name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    pool.Add(telemetry)
    runtime = _file(
        "tpuconsole/tpu_metric_service.proto",
        "tpu.monitoring.runtime",
        _RUNTIME,
        ["google/protobuf/timestamp.proto", "tpuconsole/tpu_telemetry.proto"],
    )
    service = runtime.service.add(name="RuntimeMetricService")
    for method, request, response in (
        ("GetRuntimeMetric", "MetricRequest", "MetricResponse"),
        ("ListSupportedMetrics", "ListSupportedMetricsRequest", "ListSupportedMetricsResponse"),
        ("GetTpuRuntimeStatus", "GetTpuRuntimeStatusRequest", "GetTpuRuntimeStatusResponse"),
    ):
        service.method.add(name=method, input_type=_R + request, output_type=_R + response)
    pool.Add(runtime)
    classes = {}
    for full in (*(f"tpu_telemetry.{n}" for n in _TELEMETRY), *(_R[1:] + n for n in _RUNTIME)):
        classes[full] = message_factory.GetMessageClass(pool.FindMessageTypeByName(full))
    classes["pool"] = pool
    return classes


_CLASSES = _build()
POOL: descriptor_pool.DescriptorPool = _CLASSES["pool"]
MetricRequest = _CLASSES["tpu.monitoring.runtime.MetricRequest"]
MetricResponse = _CLASSES["tpu.monitoring.runtime.MetricResponse"]
TPUMetric = _CLASSES["tpu.monitoring.runtime.TPUMetric"]
Metric = _CLASSES["tpu.monitoring.runtime.Metric"]
Attribute = _CLASSES["tpu.monitoring.runtime.Attribute"]
AttrValue = _CLASSES["tpu.monitoring.runtime.AttrValue"]
Gauge = _CLASSES["tpu.monitoring.runtime.Gauge"]
ListSupportedMetricsRequest = _CLASSES["tpu.monitoring.runtime.ListSupportedMetricsRequest"]
ListSupportedMetricsResponse = _CLASSES["tpu.monitoring.runtime.ListSupportedMetricsResponse"]
SupportedMetric = _CLASSES["tpu.monitoring.runtime.SupportedMetric"]
GetTpuRuntimeStatusRequest = _CLASSES["tpu.monitoring.runtime.GetTpuRuntimeStatusRequest"]
GetTpuRuntimeStatusResponse = _CLASSES["tpu.monitoring.runtime.GetTpuRuntimeStatusResponse"]
CurrentCoreStateSummary = _CLASSES["tpu_telemetry.CurrentCoreStateSummary"]
TpuCoreIdentifier = _CLASSES["tpu_telemetry.TpuCoreIdentifier"]
TpuCoreOnChipProto = _CLASSES["tpu_telemetry.TpuCoreOnChipProto"]
TENSOR_CORE = 1  # TpuCoreTypeProto.TPU_CORE_TYPE_TENSOR_CORE

# (request class, response class) of each method, for stubs and servers alike.
METHODS: dict[str, tuple[Any, Any]] = {
    GET_RUNTIME_METRIC: (MetricRequest, MetricResponse),
    LIST_SUPPORTED_METRICS: (ListSupportedMetricsRequest, ListSupportedMetricsResponse),
    GET_TPU_RUNTIME_STATUS: (GetTpuRuntimeStatusRequest, GetTpuRuntimeStatusResponse),
}


def device_gauge(device_id: int, *, as_int: int | None = None, as_double: float | None = None):
    """One device's value as libtpu reports it: the device id in the metric's attribute."""
    gauge = Gauge(as_int=as_int) if as_int is not None else Gauge(as_double=as_double or 0.0)
    return Metric(
        attribute=Attribute(key=DEVICE_ID_KEY, value=AttrValue(int_attr=device_id)), gauge=gauge
    )


def device_values(response: Any) -> dict[int, float]:
    """{device id: value} of a per-device gauge metric (ints and doubles alike)."""
    out: dict[int, float] = {}
    for metric in response.metric.metrics:
        which = metric.gauge.WhichOneof("value")
        if which in ("as_int", "as_double"):
            out[int(metric.attribute.value.int_attr)] = float(getattr(metric.gauge, which))
    return out
