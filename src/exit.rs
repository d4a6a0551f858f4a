//! The one exit convention of every `dearsync` command (README, "Exit status").

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Done; nothing needs a person.
    Ok,
    /// Done, but something needs a person: orders skipped, a snapshot held, unknown SKUs, lines
    /// skipped or held for review.
    NeedsAttention,
    /// Nothing done because another run or worker is doing it now (the run lease is held, the
    /// shipment or snapshot is being applied): try again later.
    Busy,
}

/// Exit status of a command that failed (an error, a failed delivery, a refused shipment).
pub const FAILED: u8 = 1;
/// Exit status of [`Ended::NeedsAttention`].
pub const NEEDS_ATTENTION: u8 = 2;
/// Exit status of [`Ended::Busy`]: BSD's `EX_TEMPFAIL` ("try again later").
pub const BUSY: u8 = 75;
/// Exit status of a command line that is wrong (an unknown flag, a missing argument); BSD's
/// `EX_USAGE`, so it is never mistaken for a job's outcome.
pub const USAGE: u8 = 64;

impl Ended {
    /// `NeedsAttention` if `attention`, else `Ok`.
    pub fn attention_if(attention: bool) -> Ended {
        if attention {
            Ended::NeedsAttention
        } else {
            Ended::Ok
        }
    }
}

/// Why a command failed: the message printed on stderr, and the typed cause it came from, if any.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl CliError {
    /// `context: source`, keeping `source` as the cause.
    pub fn with(
        context: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        CliError {
            message: format!("{context}: {source}"),
            source: Some(Box::new(source)),
        }
    }
}

impl CliError {
    /// `source` as it prints, kept as the cause.
    pub fn of(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        CliError {
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError {
            message,
            source: None,
        }
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

/// The exit status of a command's result; an error is printed on stderr.
pub fn status(result: Result<Ended, CliError>) -> std::process::ExitCode {
    match result {
        Ok(Ended::Ok) => std::process::ExitCode::SUCCESS,
        Ok(Ended::NeedsAttention) => std::process::ExitCode::from(NEEDS_ATTENTION),
        Ok(Ended::Busy) => std::process::ExitCode::from(BUSY),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(FAILED)
        }
    }
}
