//! Small constructors for OTLP common types, so the rest of the crate reads
//! as "attribute `x` is string `y`" rather than nested struct literals.

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, any_value,
};

/// A string [`AnyValue`].
pub(crate) fn string_value(value: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value.into())),
    }
}

/// An integer [`AnyValue`].
pub(crate) fn int_value(value: i64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(value)),
    }
}

/// A float [`AnyValue`].
pub(crate) fn double_value(value: f64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::DoubleValue(value)),
    }
}

/// A bool [`AnyValue`].
pub(crate) fn bool_value(value: bool) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::BoolValue(value)),
    }
}

/// An array [`AnyValue`].
pub(crate) fn array_value(values: Vec<AnyValue>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::ArrayValue(ArrayValue { values })),
    }
}

/// A key/value-list [`AnyValue`].
pub(crate) fn kvlist_value(values: Vec<KeyValue>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::KvlistValue(KeyValueList { values })),
    }
}

/// An empty [`AnyValue`] (JSON `null`).
pub(crate) fn empty_value() -> AnyValue {
    AnyValue { value: None }
}

/// A [`KeyValue`] attribute.
pub(crate) fn key_value(key: impl Into<String>, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(value),
        ..Default::default()
    }
}
