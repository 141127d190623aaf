//! PromQL functions.

use std::collections::HashMap;

use promql_parser::label::MatchOp;
use promql_parser::parser::{Call, Expr};
use regex::Regex;

use super::eval::{
    Evaluator, RangeArg, ascending_nan_last, descending_nan_last, is_valid_label_name, kahan_sum,
    kahan_sum_inc,
};
use super::{QueryError, Sample, Value};
use crate::{Labels, METRIC_NAME};

pub(super) fn call(
    evaluator: &Evaluator<'_>,
    call: &Call,
    time_ms: i64,
) -> Result<Value, QueryError> {
    let name = call.func.name;
    let args: Vec<&Expr> = call.args.args.iter().map(|arg| arg.as_ref()).collect();
    let arg = |index: usize| -> Result<&Expr, QueryError> {
        args.get(index)
            .copied()
            .ok_or_else(|| QueryError::Execution(format!("missing argument {index} of {name}")))
    };
    match name {
        "time" => Ok(Value::Scalar(time_ms as f64 / 1000.0)),
        "pi" => Ok(Value::Scalar(std::f64::consts::PI)),
        "vector" => {
            let value = evaluator.eval_scalar(arg(0)?, time_ms)?;
            Ok(Value::Vector(vec![Sample {
                labels: Labels::default(),
                timestamp_ms: time_ms,
                value,
            }]))
        }
        "scalar" => {
            let samples = evaluator.eval_vector(arg(0)?, time_ms)?;
            Ok(Value::Scalar(if samples.len() == 1 {
                samples[0].value
            } else {
                f64::NAN
            }))
        }
        "abs" | "ceil" | "floor" | "exp" | "ln" | "log2" | "log10" | "sqrt" | "sgn" | "sin"
        | "cos" | "tan" | "asin" | "acos" | "atan" | "sinh" | "cosh" | "tanh" | "asinh"
        | "acosh" | "atanh" | "deg" | "rad" => {
            let function: fn(f64) -> f64 = match name {
                "abs" => f64::abs,
                "ceil" => f64::ceil,
                "floor" => f64::floor,
                "exp" => f64::exp,
                "ln" => f64::ln,
                "log2" => f64::log2,
                "log10" => f64::log10,
                "sqrt" => f64::sqrt,
                "sgn" => |value: f64| {
                    if value > 0.0 {
                        1.0
                    } else if value < 0.0 {
                        -1.0
                    } else {
                        value
                    }
                },
                "sin" => f64::sin,
                "cos" => f64::cos,
                "tan" => f64::tan,
                "asin" => f64::asin,
                "acos" => f64::acos,
                "atan" => f64::atan,
                "sinh" => f64::sinh,
                "cosh" => f64::cosh,
                "tanh" => f64::tanh,
                "asinh" => f64::asinh,
                "acosh" => f64::acosh,
                "atanh" => f64::atanh,
                "deg" => f64::to_degrees,
                _ => f64::to_radians,
            };
            map_vector(evaluator.eval_vector(arg(0)?, time_ms)?, true, function)
        }
        "round" => {
            let to_nearest = match args.get(1) {
                Some(expr) => evaluator.eval_scalar(expr, time_ms)?,
                None => 1.0,
            };
            let inverse = 1.0 / to_nearest;
            map_vector(evaluator.eval_vector(arg(0)?, time_ms)?, true, |value| {
                (value * inverse + 0.5).floor() / inverse
            })
        }
        "clamp" | "clamp_min" | "clamp_max" => {
            let samples = evaluator.eval_vector(arg(0)?, time_ms)?;
            let (minimum, maximum) = match name {
                "clamp" => (
                    evaluator.eval_scalar(arg(1)?, time_ms)?,
                    evaluator.eval_scalar(arg(2)?, time_ms)?,
                ),
                "clamp_min" => (evaluator.eval_scalar(arg(1)?, time_ms)?, f64::NAN),
                _ => (f64::NAN, evaluator.eval_scalar(arg(1)?, time_ms)?),
            };
            if name == "clamp" && maximum < minimum {
                return Ok(Value::Vector(Vec::new()));
            }
            map_vector(samples, true, |value| {
                let mut result = value;
                if name != "clamp_max" {
                    result = go_max(minimum, result);
                }
                if name != "clamp_min" {
                    result = go_min(maximum, result);
                }
                result
            })
        }
        "timestamp" => timestamp(evaluator, arg(0)?, time_ms),
        "sort" | "sort_desc" => {
            let mut samples = evaluator.eval_vector(arg(0)?, time_ms)?;
            if name == "sort" {
                samples.sort_by(|left, right| ascending_nan_last(left.value, right.value));
            } else {
                samples.sort_by(|left, right| descending_nan_last(left.value, right.value));
            }
            Ok(Value::Vector(samples))
        }
        "sort_by_label" | "sort_by_label_desc" => {
            let mut samples = evaluator.eval_vector(arg(0)?, time_ms)?;
            let mut names = Vec::new();
            for expr in &args[1..] {
                names.push(evaluator.eval_string(expr, time_ms)?);
            }
            samples.sort_by(|left, right| {
                for name in &names {
                    let ordering = natural_cmp(left.labels.get(name), right.labels.get(name));
                    if ordering != std::cmp::Ordering::Equal {
                        return ordering;
                    }
                }
                left.labels.cmp(&right.labels)
            });
            if name == "sort_by_label_desc" {
                samples.reverse();
            }
            Ok(Value::Vector(samples))
        }
        "label_replace" => label_replace(evaluator, &args, time_ms),
        "label_join" => label_join(evaluator, &args, time_ms),
        "absent" => {
            let samples = evaluator.eval_vector(arg(0)?, time_ms)?;
            if !samples.is_empty() {
                return Ok(Value::Vector(Vec::new()));
            }
            Ok(absent_result(arg(0)?, time_ms))
        }
        "absent_over_time" => {
            let range = evaluator.eval_range_arg(arg(0)?, time_ms)?;
            if range.series.iter().any(|series| !series.points.is_empty()) {
                return Ok(Value::Vector(Vec::new()));
            }
            Ok(absent_result(arg(0)?, time_ms))
        }
        "histogram_quantile" => {
            let quantile = evaluator.eval_scalar(arg(0)?, time_ms)?;
            let samples = evaluator.eval_vector(arg(1)?, time_ms)?;
            Ok(Value::Vector(histogram_quantile(
                quantile, samples, time_ms,
            )))
        }
        "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour" | "minute"
        | "month" | "year" => {
            let samples = match args.first() {
                Some(expr) => evaluator.eval_vector(expr, time_ms)?,
                None => vec![Sample {
                    labels: Labels::default(),
                    timestamp_ms: time_ms,
                    value: time_ms as f64 / 1000.0,
                }],
            };
            map_vector(samples, true, |value| date_part(name, value))
        }
        "quantile_over_time" => {
            let quantile = evaluator.eval_scalar(arg(0)?, time_ms)?;
            let range = evaluator.eval_range_arg(arg(1)?, time_ms)?;
            over_time(range, time_ms, true, |points, _| {
                Some(quantile_of(
                    quantile,
                    points.iter().map(|(_, value)| *value).collect(),
                ))
            })
        }
        "predict_linear" => {
            let seconds = evaluator.eval_scalar(arg(1)?, time_ms)?;
            let range = evaluator.eval_range_arg(arg(0)?, time_ms)?;
            // Prometheus regresses around the evaluation time, even under `@`
            let reference_ms = time_ms;
            over_time(range, time_ms, true, |points, _| {
                if points.len() < 2 {
                    return None;
                }
                let (slope, intercept) = linear_regression(points, reference_ms);
                Some(slope * seconds + intercept)
            })
        }
        "double_exponential_smoothing" | "holt_winters" => {
            let smoothing = evaluator.eval_scalar(arg(1)?, time_ms)?;
            let trend = evaluator.eval_scalar(arg(2)?, time_ms)?;
            if smoothing <= 0.0 || smoothing >= 1.0 {
                return Err(QueryError::Execution(format!(
                    "invalid smoothing factor. Expected: 0 < sf < 1, got: {smoothing}"
                )));
            }
            if trend <= 0.0 || trend >= 1.0 {
                return Err(QueryError::Execution(format!(
                    "invalid trend factor. Expected: 0 < tf < 1, got: {trend}"
                )));
            }
            let range = evaluator.eval_range_arg(arg(0)?, time_ms)?;
            over_time(range, time_ms, true, |points, _| {
                double_exponential_smoothing(points, smoothing, trend)
            })
        }
        _ => {
            let range = evaluator.eval_range_arg(arg(0)?, time_ms)?;
            range_function(name, range, time_ms)
        }
    }
}

fn go_max(left: f64, right: f64) -> f64 {
    if left.is_nan() || right.is_nan() {
        if left.is_nan() && right.is_nan() {
            return f64::NAN;
        }
        return if left.is_nan() { right } else { left };
    }
    left.max(right)
}

fn go_min(left: f64, right: f64) -> f64 {
    if left.is_nan() || right.is_nan() {
        if left.is_nan() && right.is_nan() {
            return f64::NAN;
        }
        return if left.is_nan() { right } else { left };
    }
    left.min(right)
}

fn map_vector(
    samples: Vec<Sample>,
    drop_name: bool,
    function: impl Fn(f64) -> f64,
) -> Result<Value, QueryError> {
    Ok(Value::Vector(
        samples
            .into_iter()
            .map(|sample| Sample {
                labels: if drop_name {
                    sample.labels.without_metric_name()
                } else {
                    sample.labels
                },
                timestamp_ms: sample.timestamp_ms,
                value: function(sample.value),
            })
            .collect(),
    ))
}

fn timestamp(evaluator: &Evaluator<'_>, arg: &Expr, time_ms: i64) -> Result<Value, QueryError> {
    let mut inner = arg;
    while let Expr::Paren(paren) = inner {
        inner = &paren.expr;
    }
    if let Expr::VectorSelector(selector) = inner {
        let samples = evaluator.select_instant(selector, time_ms)?;
        return Ok(Value::Vector(
            samples
                .into_iter()
                .map(|(labels, sample_ms, _)| Sample {
                    labels: labels.without_metric_name(),
                    timestamp_ms: time_ms,
                    value: sample_ms as f64 / 1000.0,
                })
                .collect(),
        ));
    }
    let samples = evaluator.eval_vector(arg, time_ms)?;
    map_vector(samples, true, |_| time_ms as f64 / 1000.0)
}

fn label_replace(
    evaluator: &Evaluator<'_>,
    args: &[&Expr],
    time_ms: i64,
) -> Result<Value, QueryError> {
    if args.len() != 5 {
        return Err(QueryError::Execution(
            "label_replace needs 5 arguments".into(),
        ));
    }
    let samples = evaluator.eval_vector(args[0], time_ms)?;
    let destination = evaluator.eval_string(args[1], time_ms)?;
    let replacement = evaluator.eval_string(args[2], time_ms)?;
    let source = evaluator.eval_string(args[3], time_ms)?;
    let pattern = evaluator.eval_string(args[4], time_ms)?;
    let regex = Regex::new(&format!("^(?s:{pattern})$")).map_err(|error| {
        QueryError::Execution(format!(
            "invalid regular expression in label_replace(): {error}"
        ))
    })?;
    if !is_valid_label_name(&destination) {
        return Err(QueryError::Execution(format!(
            "invalid destination label name in label_replace(): {destination}"
        )));
    }
    let mut result = Vec::with_capacity(samples.len());
    for mut sample in samples {
        let source_value = sample.labels.get(&source).to_string();
        if let Some(captures) = regex.captures(&source_value) {
            let mut expanded = String::new();
            captures.expand(&replacement, &mut expanded);
            sample.labels.set(&destination, &expanded);
        }
        result.push(sample);
    }
    Ok(Value::Vector(result))
}

fn label_join(
    evaluator: &Evaluator<'_>,
    args: &[&Expr],
    time_ms: i64,
) -> Result<Value, QueryError> {
    if args.len() < 3 {
        return Err(QueryError::Execution(
            "label_join needs at least 3 arguments".into(),
        ));
    }
    let samples = evaluator.eval_vector(args[0], time_ms)?;
    let destination = evaluator.eval_string(args[1], time_ms)?;
    let separator = evaluator.eval_string(args[2], time_ms)?;
    let mut sources = Vec::new();
    for expr in &args[3..] {
        sources.push(evaluator.eval_string(expr, time_ms)?);
    }
    if !is_valid_label_name(&destination) {
        return Err(QueryError::Execution(format!(
            "invalid destination label name in label_join(): {destination}"
        )));
    }
    let mut result = Vec::with_capacity(samples.len());
    for mut sample in samples {
        let joined: Vec<&str> = sources.iter().map(|name| sample.labels.get(name)).collect();
        let joined = joined.join(&separator);
        sample.labels.set(&destination, &joined);
        result.push(sample);
    }
    Ok(Value::Vector(result))
}

/// The single sample `absent` returns: labels from the selector's equality
/// matchers, except names matched more than once.
fn absent_result(arg: &Expr, time_ms: i64) -> Value {
    let mut inner = arg;
    loop {
        match inner {
            Expr::Paren(paren) => inner = &paren.expr,
            Expr::MatrixSelector(matrix) => {
                return absent_labels(&matrix.vs.matchers.matchers, time_ms);
            }
            Expr::VectorSelector(selector) => {
                return absent_labels(&selector.matchers.matchers, time_ms);
            }
            _ => return absent_labels(&[], time_ms),
        }
    }
}

fn absent_labels(matchers: &[promql_parser::label::Matcher], time_ms: i64) -> Value {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut repeated: Vec<String> = Vec::new();
    for matcher in matchers {
        if matcher.name == METRIC_NAME {
            continue;
        }
        // a label constrained twice is left out, whatever the second matcher
        if matchers
            .iter()
            .filter(|other| other.name == matcher.name)
            .count()
            > 1
        {
            repeated.push(matcher.name.clone());
        }
        if matches!(matcher.op, MatchOp::Equal) {
            pairs.push((matcher.name.clone(), matcher.value.clone()));
        }
    }
    pairs.retain(|(name, _)| !repeated.contains(name));
    Value::Vector(vec![Sample {
        labels: Labels::new(pairs),
        timestamp_ms: time_ms,
        value: 1.0,
    }])
}

/// Applies `function` to each series of a range vector; `None` drops it.
fn over_time(
    range: RangeArg,
    time_ms: i64,
    drop_name: bool,
    function: impl Fn(&[(i64, f64)], &RangeArg) -> Option<f64>,
) -> Result<Value, QueryError> {
    let mut result = Vec::with_capacity(range.series.len());
    for series in &range.series {
        if series.points.is_empty() {
            continue;
        }
        if let Some(value) = function(&series.points, &range) {
            let labels = if drop_name {
                series.labels.without_metric_name()
            } else {
                series.labels.clone()
            };
            result.push(Sample {
                labels,
                timestamp_ms: time_ms,
                value,
            });
        }
    }
    Ok(Value::Vector(result))
}

fn range_function(name: &str, range: RangeArg, time_ms: i64) -> Result<Value, QueryError> {
    match name {
        "rate" => over_time(range, time_ms, true, |points, range| {
            extrapolated_rate(points, range, true, true)
        }),
        "increase" => over_time(range, time_ms, true, |points, range| {
            extrapolated_rate(points, range, true, false)
        }),
        "delta" => over_time(range, time_ms, true, |points, range| {
            extrapolated_rate(points, range, false, false)
        }),
        "irate" | "idelta" => over_time(range, time_ms, true, |points, _| {
            instant_delta(points, name == "irate")
        }),
        "deriv" => over_time(range, time_ms, true, |points, _| {
            if points.len() < 2 {
                return None;
            }
            Some(linear_regression(points, points[0].0).0)
        }),
        "changes" | "resets" => over_time(range, time_ms, true, |points, _| {
            let mut count = 0.0;
            for pair in points.windows(2) {
                let (previous, current) = (pair[0].1, pair[1].1);
                let counted = if name == "changes" {
                    current != previous && !(current.is_nan() && previous.is_nan())
                } else {
                    current < previous
                };
                if counted {
                    count += 1.0;
                }
            }
            Some(count)
        }),
        "avg_over_time" => over_time(range, time_ms, true, |points, _| {
            Some(average(&values_of(points)))
        }),
        "sum_over_time" => over_time(range, time_ms, true, |points, _| {
            Some(kahan_sum(&values_of(points)))
        }),
        "count_over_time" => over_time(range, time_ms, true, |points, _| Some(points.len() as f64)),
        "min_over_time" => over_time(range, time_ms, true, |points, _| {
            Some(points.iter().fold(f64::NAN, |minimum, (_, value)| {
                if *value < minimum || minimum.is_nan() {
                    *value
                } else {
                    minimum
                }
            }))
        }),
        "max_over_time" => over_time(range, time_ms, true, |points, _| {
            Some(points.iter().fold(f64::NAN, |maximum, (_, value)| {
                if *value > maximum || maximum.is_nan() {
                    *value
                } else {
                    maximum
                }
            }))
        }),
        "last_over_time" => over_time(range, time_ms, false, |points, _| {
            points.last().map(|p| p.1)
        }),
        "first_over_time" => over_time(range, time_ms, false, |points, _| {
            points.first().map(|p| p.1)
        }),
        "present_over_time" => over_time(range, time_ms, true, |_, _| Some(1.0)),
        "stddev_over_time" => over_time(range, time_ms, true, |points, _| {
            Some(variance_over_time(points).sqrt())
        }),
        "stdvar_over_time" => over_time(range, time_ms, true, |points, _| {
            Some(variance_over_time(points))
        }),
        "mad_over_time" => over_time(range, time_ms, true, |points, _| {
            let values = values_of(points);
            let median = quantile_of(0.5, values.clone());
            let deviations = values.iter().map(|value| (value - median).abs()).collect();
            Some(quantile_of(0.5, deviations))
        }),
        "ts_of_min_over_time" | "ts_of_max_over_time" | "ts_of_last_over_time" => {
            over_time(range, time_ms, true, |points, _| {
                let mut best = points[0];
                for point in &points[1..] {
                    let better = match name {
                        "ts_of_min_over_time" => point.1 <= best.1 || best.1.is_nan(),
                        "ts_of_max_over_time" => point.1 >= best.1 || best.1.is_nan(),
                        _ => true,
                    };
                    if better {
                        best = *point;
                    }
                }
                Some(best.0 as f64 / 1000.0)
            })
        }
        other => Err(QueryError::Execution(format!(
            "unsupported function {other}"
        ))),
    }
}

fn values_of(points: &[(i64, f64)]) -> Vec<f64> {
    points.iter().map(|(_, value)| *value).collect()
}

/// `rate`, `increase` and `delta` with Prometheus' extrapolation to the
/// window's edges.
fn extrapolated_rate(
    points: &[(i64, f64)],
    range: &RangeArg,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let range_start_ms = range.end_ms - range.range_ms;
    let range_end_ms = range.end_ms;
    let (first_ms, first_value) = points[0];
    let (last_ms, last_value) = points[points.len() - 1];
    let mut result = last_value - first_value;
    if is_counter {
        let mut previous = 0.0;
        for (_, value) in points {
            if *value < previous {
                result += previous;
            }
            previous = *value;
        }
    }
    let sampled_interval = (last_ms - first_ms) as f64 / 1000.0;
    let average_between_samples = sampled_interval / (points.len() - 1) as f64;
    let mut duration_to_start = (first_ms - range_start_ms) as f64 / 1000.0;
    let mut duration_to_end = (range_end_ms - last_ms) as f64 / 1000.0;
    let threshold = average_between_samples * 1.1;
    if duration_to_start >= threshold {
        duration_to_start = average_between_samples / 2.0;
    }
    if is_counter && result > 0.0 && first_value >= 0.0 {
        let duration_to_zero = sampled_interval * (first_value / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }
    if duration_to_end >= threshold {
        duration_to_end = average_between_samples / 2.0;
    }
    let mut factor = (sampled_interval + duration_to_start + duration_to_end) / sampled_interval;
    if is_rate {
        factor /= range.range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

fn instant_delta(points: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (last_ms, last_value) = points[points.len() - 1];
    let (previous_ms, previous_value) = points[points.len() - 2];
    let mut result = if is_rate && last_value < previous_value {
        last_value
    } else {
        last_value - previous_value
    };
    let interval_ms = last_ms - previous_ms;
    if interval_ms == 0 {
        return None;
    }
    if is_rate {
        result /= interval_ms as f64 / 1000.0;
    }
    Some(result)
}

/// Least-squares slope and intercept, x in seconds relative to `intercept_ms`.
fn linear_regression(points: &[(i64, f64)], intercept_ms: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let initial = points[0].1;
    let mut constant = true;
    for (index, (time_ms, value)) in points.iter().enumerate() {
        if constant && index > 0 && *value != initial {
            constant = false;
        }
        n += 1.0;
        let x = (time_ms - intercept_ms) as f64 / 1000.0;
        (sum_x, c_x) = kahan_sum_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_sum_inc(*value, sum_y, c_y);
        (sum_xy, c_xy) = kahan_sum_inc(x * value, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_sum_inc(x * x, sum_x2, c_x2);
    }
    if constant {
        if initial.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, initial);
    }
    sum_x += c_x;
    sum_y += c_y;
    sum_xy += c_xy;
    sum_x2 += c_x2;
    let covariance = sum_xy - sum_x * sum_y / n;
    let variance = sum_x2 - sum_x * sum_x / n;
    let slope = covariance / variance;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

fn double_exponential_smoothing(points: &[(i64, f64)], smoothing: f64, trend: f64) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let mut smoothed_previous = points[0].1;
    let mut trend_value = points[1].1 - points[0].1;
    let mut smoothed = smoothed_previous;
    for (index, (_, value)) in points.iter().enumerate().skip(1) {
        if index > 1 {
            trend_value = trend * (smoothed - smoothed_previous) + (1.0 - trend) * trend_value;
        }
        smoothed_previous = smoothed;
        smoothed = smoothing * value + (1.0 - smoothing) * (smoothed_previous + trend_value);
    }
    Some(smoothed)
}

/// Mean as Prometheus computes it: compensated sum, switching to an
/// incremental mean when the sum would overflow.
pub(super) fn average(values: &[f64]) -> f64 {
    let (mut sum, mut compensation, mut mean, mut count) = (0.0, 0.0, 0.0, 0.0);
    let mut incremental = false;
    for value in values {
        count += 1.0;
        if !incremental {
            let (new_sum, new_compensation) = kahan_sum_inc(*value, sum, compensation);
            if count == 1.0 || !new_sum.is_infinite() {
                (sum, compensation) = (new_sum, new_compensation);
                continue;
            }
            incremental = true;
            mean = sum / (count - 1.0);
            compensation /= count - 1.0;
        }
        if mean.is_infinite() {
            if value.is_infinite() && (mean > 0.0) == (*value > 0.0) {
                continue;
            }
            if !value.is_infinite() && !value.is_nan() {
                continue;
            }
        }
        let current = mean + compensation;
        (mean, compensation) = kahan_sum_inc(value / count - current / count, mean, compensation);
    }
    if incremental {
        mean + compensation
    } else {
        sum / count + compensation / count
    }
}

/// Population variance as the `stdvar` aggregation computes it.
pub(super) fn variance(values: &[f64]) -> f64 {
    let (mut count, mut mean, mut aux) = (0.0, 0.0, 0.0);
    for value in values {
        count += 1.0;
        let delta = value - mean;
        mean += delta / count;
        aux += delta * (value - mean);
    }
    aux / count
}

fn variance_over_time(points: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (_, value) in points {
        count += 1.0;
        let delta = value - (mean + c_mean);
        (mean, c_mean) = kahan_sum_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_sum_inc(delta * (value - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// The φ-quantile of `values`, interpolated as Prometheus does.
pub(super) fn quantile(quantile: f64, values: Vec<f64>) -> f64 {
    quantile_of(quantile, values)
}

fn quantile_of(quantile: f64, mut values: Vec<f64>) -> f64 {
    if values.is_empty() || quantile.is_nan() {
        return f64::NAN;
    }
    if quantile < 0.0 {
        return f64::NEG_INFINITY;
    }
    if quantile > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|left, right| match (left.is_nan(), right.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => left.partial_cmp(right).unwrap_or(std::cmp::Ordering::Equal),
    });
    let count = values.len() as f64;
    let rank = quantile * (count - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(count - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

fn histogram_quantile(quantile: f64, samples: Vec<Sample>, time_ms: i64) -> Vec<Sample> {
    let mut order: Vec<Labels> = Vec::new();
    let mut groups: HashMap<Labels, Vec<(f64, f64)>> = HashMap::new();
    for sample in samples {
        let Ok(upper_bound) = parse_go_float(sample.labels.get("le")) else {
            continue;
        };
        let mut key = sample.labels.without_metric_name();
        key.remove("le");
        groups
            .entry(key.clone())
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push((upper_bound, sample.value));
    }
    order
        .into_iter()
        .map(|labels| {
            let buckets = groups.remove(&labels).unwrap_or_default();
            Sample {
                labels,
                timestamp_ms: time_ms,
                value: bucket_quantile(quantile, buckets),
            }
        })
        .collect()
}

/// Parses a float the way Go's `strconv.ParseFloat` accepts `le` values.
pub(super) fn parse_go_float(text: &str) -> Result<f64, ()> {
    let trimmed = text.trim();
    match trimmed.to_ascii_lowercase().as_str() {
        "+inf" | "inf" | "+infinity" | "infinity" => return Ok(f64::INFINITY),
        "-inf" | "-infinity" => return Ok(f64::NEG_INFINITY),
        "nan" => return Ok(f64::NAN),
        _ => {}
    }
    trimmed.parse::<f64>().map_err(|_| ())
}

fn bucket_quantile(quantile: f64, mut buckets: Vec<(f64, f64)>) -> f64 {
    if quantile.is_nan() {
        return f64::NAN;
    }
    if quantile < 0.0 {
        return f64::NEG_INFINITY;
    }
    if quantile > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|left, right| {
        left.0
            .partial_cmp(&right.0)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    if buckets.last().is_none_or(|last| last.0 != f64::INFINITY) {
        return f64::NAN;
    }
    let mut coalesced: Vec<(f64, f64)> = Vec::with_capacity(buckets.len());
    for (bound, count) in buckets {
        match coalesced.last_mut() {
            Some(last) if last.0 == bound => last.1 += count,
            _ => coalesced.push((bound, count)),
        }
    }
    let mut buckets = coalesced;
    let mut previous = buckets[0].1;
    for bucket in buckets.iter_mut().skip(1) {
        let current = bucket.1;
        if current == previous {
            continue;
        }
        if almost_equal(previous, current, 1e-12) || current < previous {
            bucket.1 = previous;
            continue;
        }
        previous = current;
    }
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].1;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = quantile * observations;
    let searched = &buckets[..buckets.len() - 1];
    let index = searched.partition_point(|bucket| bucket.1 < rank);
    if index == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if index == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let mut bucket_start = 0.0;
    let bucket_end = buckets[index].0;
    let mut count = buckets[index].1;
    if index > 0 {
        bucket_start = buckets[index - 1].0;
        count -= buckets[index - 1].1;
        rank -= buckets[index - 1].1;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

fn almost_equal(left: f64, right: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if left == right {
        return true;
    }
    let absolute_sum = left.abs() + right.abs();
    let difference = (left - right).abs();
    if left == 0.0 || right == 0.0 || absolute_sum < MIN_NORMAL {
        return difference < epsilon * MIN_NORMAL;
    }
    difference / absolute_sum.min(f64::MAX) < epsilon
}

fn date_part(name: &str, seconds: f64) -> f64 {
    if seconds.is_nan() || seconds.is_infinite() {
        return seconds;
    }
    let total_seconds = seconds.floor() as i64;
    let days = total_seconds.div_euclid(86_400);
    let second_of_day = total_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_lengths = [
        31,
        if is_leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    match name {
        "days_in_month" => month_lengths[(month - 1) as usize] as f64,
        "day_of_month" => day as f64,
        "day_of_week" => (days + 4).rem_euclid(7) as f64,
        "day_of_year" => (month_lengths[..(month - 1) as usize].iter().sum::<i64>() + day) as f64,
        "hour" => (second_of_day / 3600) as f64,
        "minute" => (second_of_day % 3600 / 60) as f64,
        "month" => month as f64,
        _ => year as f64,
    }
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

/// Compares strings with embedded numbers in numeric order.
fn natural_cmp(left: &str, right: &str) -> std::cmp::Ordering {
    let (mut left_chars, mut right_chars) = (left.chars().peekable(), right.chars().peekable());
    loop {
        match (left_chars.peek().copied(), right_chars.peek().copied()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(l), Some(r)) if l.is_ascii_digit() && r.is_ascii_digit() => {
                let mut left_number = String::new();
                while let Some(c) = left_chars.peek().copied().filter(char::is_ascii_digit) {
                    left_number.push(c);
                    left_chars.next();
                }
                let mut right_number = String::new();
                while let Some(c) = right_chars.peek().copied().filter(char::is_ascii_digit) {
                    right_number.push(c);
                    right_chars.next();
                }
                let left_trimmed = left_number.trim_start_matches('0');
                let right_trimmed = right_number.trim_start_matches('0');
                let ordering = left_trimmed
                    .len()
                    .cmp(&right_trimmed.len())
                    .then_with(|| left_trimmed.cmp(right_trimmed));
                if ordering != std::cmp::Ordering::Equal {
                    return ordering;
                }
            }
            (Some(l), Some(r)) => {
                if l != r {
                    return l.cmp(&r);
                }
                left_chars.next();
                right_chars.next();
            }
        }
    }
}
