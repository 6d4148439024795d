"""Fields Grafana saves that the SDK's 11.6 schema does not model, added by name in one place.

The Prometheus data source keeps an annotation's step and text formats at the annotation's root, and Grafana
saves a query variable's `definition` beside its query; the SDK's AnnotationQuery and VariableModel have no such
fields. test_dashboard_generator checks that nothing else in the JSON is outside the SDK's schema."""

from typing import Any, Generic, TypeVar

from grafana_foundation_sdk.cog.builder import Builder

T = TypeVar("T")
PROMETHEUS_ANNOTATION_FIELDS = frozenset({"step", "titleFormat", "textFormat", "tagKeys", "useValueForTime"})
QUERY_VARIABLE_FIELDS = frozenset({"definition"})


class _WithFields:
    def __init__(self, model: Any, fields: dict[str, Any]) -> None:
        self.model, self.fields = model, fields

    def to_json(self) -> dict[str, object]:
        return {**self.model.to_json(), **self.fields}


class WithFields(Builder[T], Generic[T]):
    """An SDK builder whose built object serializes with `fields` added."""

    def __init__(self, builder: Builder[T], allowed: frozenset[str], **fields: Any) -> None:
        assert set(fields) <= allowed, set(fields) - allowed
        self.builder, self.fields = builder, fields

    def build(self) -> T:
        return _WithFields(self.builder.build(), self.fields)  # type: ignore[return-value]
