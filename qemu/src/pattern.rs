//! What a test waits for on the serial console.

use std::fmt;

/// A console line to wait for: a plain substring or a regular expression (`regex-lite` syntax).
#[derive(Clone, Debug)]
pub enum LinePattern {
    Substring(String),
    Regex(regex_lite::Regex),
}

impl LinePattern {
    /// Match lines containing `text`.
    pub fn substring(text: impl Into<String>) -> Self {
        LinePattern::Substring(text.into())
    }

    /// Match lines matching the regular expression `re`.
    pub fn regex(re: &str) -> Result<Self, regex_lite::Error> {
        regex_lite::Regex::new(re).map(LinePattern::Regex)
    }

    pub fn matches(&self, line: &str) -> bool {
        match self {
            LinePattern::Substring(s) => line.contains(s.as_str()),
            LinePattern::Regex(re) => re.is_match(line),
        }
    }
}

impl fmt::Display for LinePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinePattern::Substring(s) => write!(f, "a line containing {s:?}"),
            LinePattern::Regex(re) => write!(f, "a line matching /{}/", re.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_and_regex() {
        let ready = LinePattern::substring("cairn: ready");
        assert!(ready.matches("[ 0.123] cairn: ready in 12 ms"));
        assert!(!ready.matches("cairn: starting"));
        let clock = LinePattern::regex(r"^clock-check (\d+)$").unwrap();
        assert!(clock.matches("clock-check 1000"));
        assert!(!clock.matches("clock-check x"));
        assert_eq!(clock.to_string(), "a line matching /^clock-check (\\d+)$/");
        assert!(LinePattern::regex("(").is_err());
    }
}
