//! Errors as data: every refusal vmm shows a user is an [`Advice`], a problem and a fix kept
//! apart, so the run path (one line on stderr), `vmm check` (detail and fix columns) and the
//! API (`{"error": ...}`) render the same data instead of splitting a rendered string.
//!
//! The convention, for every error type that can reach a user:
//! - it implements [`Explain`], and its `Display` is its advice ([`explained!`] writes both
//!   impls), so `to_string()` is exactly the line the user sees;
//! - the problem names the input (the option, path or device) and what is wrong with it; the
//!   fix says what to do, or is empty when nothing but a bug report helps;
//! - a wrapper that adds nothing passes its inner error's advice through unchanged; one that
//!   adds context puts it in front of the root cause's text, which appears once, at the end
//!   of the problem. `std::error::Error::source` is never used for messages.
//!
//! This crate must stay free of any other vmm crate: everything depends on it.

use std::fmt;

/// The fix of a problem that is vmm's own fault.
pub const BUG_FIX: &str = "this is a vmm bug: please report it with the output of vmm -vv";

/// A path as text for a message: as is when it is UTF-8, else quoted with the bytes that are
/// not shown escaped (`"/tmp/k\xFF"`).
pub fn path(p: &std::path::Path) -> String {
    match p.to_str() {
        Some(s) => s.to_string(),
        None => format!("{:?}", p.as_os_str()),
    }
}

/// A size as text in the largest binary unit it reaches: `512 MiB`, `64 KiB`, and one
/// decimal when not a whole number of them (`1.5 GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];
    match UNITS.iter().find(|(shift, _)| bytes >= 1 << shift) {
        Some((shift, unit)) if bytes.is_multiple_of(1 << shift) => {
            format!("{} {unit}", bytes >> shift)
        }
        Some((shift, unit)) => format!("{:.1} {unit}", bytes as f64 / (1u64 << shift) as f64),
        None => format!("{bytes} bytes"),
    }
}

/// What went wrong and what to do about it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advice {
    /// What is wrong, naming the input it is about.
    pub problem: String,
    /// What to do; empty when there is nothing the user can do.
    pub fix: String,
}

impl Advice {
    /// An advice from its two parts.
    pub fn new(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// A problem with no fix the user can apply.
    pub fn bare(problem: impl Into<String>) -> Self {
        Self::new(problem, String::new())
    }

    /// A problem that only a fix in vmm can solve.
    pub fn bug(problem: impl Into<String>) -> Self {
        Self::new(problem, BUG_FIX)
    }

    /// The same advice with the problem's subject in front: `subject problem` (for a problem
    /// worded as a predicate, "is empty").
    pub fn about(mut self, subject: impl fmt::Display) -> Self {
        self.problem = format!("{subject} {}", self.problem);
        self
    }

    /// The same advice with `context` in front of the problem: `context: problem`.
    pub fn within(mut self, context: impl fmt::Display) -> Self {
        self.problem = format!("{context}: {}", self.problem);
        self
    }
}

/// `problem; fix`, or the problem alone when there is no fix. Control characters (a newline
/// or an escape sequence quoted back from the user's input) are shown escaped, so the
/// message is always one line.
impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_one_line(f, &self.problem)?;
        if !self.fix.is_empty() {
            f.write_str("; ")?;
            write_one_line(f, &self.fix)?;
        }
        Ok(())
    }
}

/// Writes `s` with control characters (and the Unicode line and paragraph separators)
/// escaped.
fn write_one_line(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    for c in s.chars() {
        if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
            write!(f, "{}", c.escape_default())?;
        } else {
            fmt::Write::write_char(f, c)?;
        }
    }
    Ok(())
}

/// An error a user can read: its problem and its fix.
pub trait Explain {
    /// The problem and the fix.
    fn advice(&self) -> Advice;
}

impl<T: Explain + ?Sized> Explain for &T {
    fn advice(&self) -> Advice {
        (**self).advice()
    }
}

impl Explain for Advice {
    fn advice(&self) -> Advice {
        self.clone()
    }
}

/// Implements `Display` (the advice, one line) and `std::error::Error` for types that
/// implement [`Explain`].
#[macro_export]
macro_rules! explained {
    ($($t:ty),+ $(,)?) => {$(
        impl ::std::fmt::Display for $t {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(&$crate::Explain::advice(self), f)
            }
        }
        impl ::std::error::Error for $t {}
    )+};
}

/// `From` impls that wrap each source error type in its variant of an error enum:
/// `diag::wrap!(Error: Sysfs(vfio::sysfs::Error), Boot(arch::boot::Error));`.
#[macro_export]
macro_rules! wrap {
    ($enum:ty: $($variant:ident($t:ty)),+ $(,)?) => {$(
        impl ::std::convert::From<$t> for $enum {
            fn from(e: $t) -> Self {
                <$enum>::$variant(e)
            }
        }
    )+};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Missing(&'static str);

    impl Explain for Missing {
        fn advice(&self) -> Advice {
            Advice::new(format!("no file {}", self.0), "check the path".to_string())
        }
    }
    explained!(Missing);

    #[test]
    fn display_is_problem_then_fix() {
        assert_eq!(Missing("k").to_string(), "no file k; check the path");
        assert_eq!(Advice::bare("broken").to_string(), "broken");
        let e: Box<dyn std::error::Error> = Box::new(Missing("x"));
        assert_eq!(e.to_string(), "no file x; check the path");
    }

    #[test]
    fn context_goes_in_front_of_the_problem() {
        let a = Missing("k").advice().within("--kernel");
        assert_eq!(a.problem, "--kernel: no file k");
        assert_eq!(a.fix, "check the path");
    }

    #[test]
    fn paths_that_are_not_utf8_are_escaped() {
        use std::os::unix::ffi::OsStrExt;
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/tmp/k\xff"));
        assert_eq!(path(p), "\"/tmp/k\\xFF\"");
        assert_eq!(path(std::path::Path::new("/boot/vmlinuz")), "/boot/vmlinuz");
    }

    #[test]
    fn always_one_line() {
        let a = Advice::new("bad '--x\nrm -rf'", "fix\r\u{1b}[2J\u{2028}");
        assert_eq!(
            a.to_string(),
            "bad '--x\\nrm -rf'; fix\\r\\u{1b}[2J\\u{2028}"
        );
        assert!(!a.to_string().contains('\n'));
    }
}
