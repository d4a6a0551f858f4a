//! The error of a value that does not read as what it should be.

/// A value that does not read as what it should be: its text quotes the value and says what was
/// expected (callers add where it was: a setting's key, a file's line and column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not {expected}")]
pub struct InvalidValue {
    /// The value as given (trimmed).
    pub value: String,
    /// What it should have been, e.g. `a date (expected YYYY-MM-DD)`.
    pub expected: String,
}

impl InvalidValue {
    /// `value` is not `expected`.
    pub fn new(value: &str, expected: impl Into<String>) -> Self {
        InvalidValue {
            value: value.to_owned(),
            expected: expected.into(),
        }
    }
}
