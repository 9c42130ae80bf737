"""Our definitions of libtpu's RuntimeMetricService against the shape tpu-info publishes.

The table below is read from tpu-info's `tpu_info/proto/tpu_metric_service.proto` and
`tpu_telemetry.proto` (AI-Hypercomputer/cloud-accelerator-diagnostics at fe85c12, 0.14.2): if our
definitions ever drift from it, a real libtpu's answers would decode wrongly, and this fails.
"""

from __future__ import annotations

from console.adapters import runtime_metrics_proto as wire

# message: {field: (number, type)} as tpu-info's .proto declares them.
PUBLISHED = {
    "tpu.monitoring.runtime.MetricRequest": {
        "metric_name": (1, "string"),
        "skip_node_aggregation": (2, "bool"),
    },
    "tpu.monitoring.runtime.MetricResponse": {"metric": (1, "TPUMetric")},
    "tpu.monitoring.runtime.TPUMetric": {
        "name": (1, "string"),
        "description": (2, "string"),
        "metrics": (3, "Metric"),
    },
    "tpu.monitoring.runtime.Metric": {
        "attribute": (1, "Attribute"),
        "timestamp": (2, "Timestamp"),
        "gauge": (3, "Gauge"),
        "counter": (4, "Counter"),
        "distribution": (5, "Distribution"),
        "summary": (6, "Summary"),
        "start_timestamp": (7, "Timestamp"),
    },
    "tpu.monitoring.runtime.Gauge": {
        "as_double": (1, "double"),
        "as_int": (2, "int64"),
        "as_string": (3, "string"),
        "as_bool": (4, "bool"),
    },
    "tpu.monitoring.runtime.Attribute": {"key": (1, "string"), "value": (2, "AttrValue")},
    "tpu.monitoring.runtime.AttrValue": {
        "string_attr": (1, "string"),
        "bool_attr": (2, "bool"),
        "int_attr": (3, "int64"),
        "double_attr": (4, "double"),
        "array_attr": (5, "ArrayAttrValue"),
        "kvlist_attr": (6, "KeyValueList"),
        "bytes_attr": (7, "bytes"),
    },
    "tpu.monitoring.runtime.ListSupportedMetricsRequest": {"filter": (1, "string")},
    "tpu.monitoring.runtime.ListSupportedMetricsResponse": {
        "supported_metric": (1, "SupportedMetric")
    },
    "tpu.monitoring.runtime.SupportedMetric": {"metric_name": (1, "string")},
    "tpu.monitoring.runtime.GetTpuRuntimeStatusRequest": {"include_hlo_info": (1, "bool")},
    "tpu.monitoring.runtime.GetTpuRuntimeStatusResponse": {
        "host_name": (1, "string"),
        "core_states": (2, "CoreStatesEntry"),
    },
    "tpu_telemetry.CurrentCoreStateSummary": {
        "core_id": (1, "TpuCoreIdentifier"),
        "sequencer_info": (2, "SequencerInfo"),
        "xdb_server_running": (3, "bool"),
        "program_fingerprint": (4, "bytes"),
        "launch_id": (5, "int32"),
        "queued_program_info": (6, "QueuedProgramInfo"),
        "error_message": (7, "string"),
    },
    "tpu_telemetry.TpuCoreIdentifier": {
        "global_core_id": (1, "int32"),
        "chip_id": (2, "int32"),
        "core_on_chip": (3, "TpuCoreOnChipProto"),
    },
}
_TYPE_NAMES = {1: "double", 3: "int64", 5: "int32", 8: "bool", 9: "string", 12: "bytes"}


def _shape(full_name: str) -> dict[str, tuple[int, str]]:
    message = wire.POOL.FindMessageTypeByName(full_name)
    return {
        f.name: (f.number, f.message_type.name if f.message_type else _TYPE_NAMES[f.type])
        for f in message.fields
    }


def test_messages_have_the_published_field_names_numbers_and_types() -> None:
    for name, fields in PUBLISHED.items():
        assert _shape(name) == fields, name


def test_the_service_and_its_methods_are_named_as_libtpu_serves_them() -> None:
    service = wire.POOL.FindServiceByName("tpu.monitoring.runtime.RuntimeMetricService")
    assert {m.name: (m.input_type.name, m.output_type.name) for m in service.methods} == {
        "GetRuntimeMetric": ("MetricRequest", "MetricResponse"),
        "ListSupportedMetrics": ("ListSupportedMetricsRequest", "ListSupportedMetricsResponse"),
        "GetTpuRuntimeStatus": ("GetTpuRuntimeStatusRequest", "GetTpuRuntimeStatusResponse"),
    }
    assert wire.GET_RUNTIME_METRIC == (
        "/tpu.monitoring.runtime.RuntimeMetricService/GetRuntimeMetric"
    )


def test_a_device_gauge_round_trips_in_the_wire_bytes_libtpu_sends() -> None:
    request = wire.MetricRequest(metric_name="tpu.runtime.hbm.memory.usage.bytes")
    assert request.SerializeToString() == b"\n\x22tpu.runtime.hbm.memory.usage.bytes"
    # Metric{attribute{key "device-id" value{int_attr 3}} gauge{as_int 42}}, as tpu-info reads it
    metric = bytes.fromhex("0a0f0a096465766963652d6964120218031a02102a")
    response = wire.MetricResponse.FromString(b"\x0a" + bytes([len(metric) + 2]) + b"\x1a"
                                              + bytes([len(metric)]) + metric)  # fmt: skip
    assert wire.device_values(response) == {3: 42.0}
    assert wire.device_gauge(3, as_int=42).SerializeToString() == metric


def test_an_optional_field_keeps_its_presence_as_proto3_optional_does() -> None:
    status = wire.GetTpuRuntimeStatusResponse()
    assert not status.HasField("host_name")
    status.host_name = ""
    assert status.HasField("host_name")
