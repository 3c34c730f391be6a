//! The summary every bench prints of several runs: their median and their range.

/// (median, lowest, highest) of `values`, which must not be empty; of an even number
/// of values, the median is the upper of the middle two.
pub fn spread(values: impl IntoIterator<Item = f64>) -> (f64, f64, f64) {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}
