//! One finding of a check of a copy or a bundle: which check, what is wrong, what to do.

use serde::Serialize;

/// One thing wrong with a copy or a bundle.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub check: &'static str,
    pub message: String,
    pub hint: String,
}

/// Builds a [`Problem`].
pub(crate) fn problem(
    check: &'static str,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> Problem {
    Problem {
        check,
        message: message.into(),
        hint: hint.into(),
    }
}
