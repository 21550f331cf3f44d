//! The statsd line format as a pure function: plain statsd and DogStatsD
//! (`name:value|type[|@rate][|#tag:v,tag2]`), several lines per datagram. Anything else
//! is an error the caller counts and skips.

use std::fmt;

/// Largest magnitude accepted for a value; beyond it the line is absurd.
pub const MAX_ABS_VALUE: f64 = 1e15;

/// A metric type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// `c`: a count (Envoy sends the delta since its last flush).
    Counter,
    /// `g`: a gauge; `delta` when the value was written with a leading `+` or `-`.
    Gauge {
        /// Adjusts the current value instead of replacing it.
        delta: bool,
    },
    /// `ms`: a timer sample.
    Timer,
    /// `h`: a histogram sample.
    Histogram,
    /// `d`: a distribution sample (DogStatsD).
    Distribution,
    /// `s`: a set member.
    Set,
}

/// One parsed line, borrowing from the datagram.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric<'a> {
    /// Metric name.
    pub name: &'a str,
    /// Value (for sets: 0, the member is in `set_member`).
    pub value: f64,
    /// Type.
    pub kind: Kind,
    /// Sample rate, in (0, 1].
    pub sample_rate: f64,
    /// The raw DogStatsD tag list, if any (`a:b,c`).
    pub tags: Option<&'a str>,
    /// The member of a set.
    pub set_member: Option<&'a str>,
}

/// Why a line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Not UTF-8.
    NotUtf8,
    /// No `:` between name and value, or an empty name.
    NoName,
    /// No `|type`.
    NoType,
    /// The value is not a number.
    BadValue,
    /// The value is NaN, infinite or beyond [`MAX_ABS_VALUE`].
    AbsurdValue,
    /// An unknown type.
    UnknownType,
    /// A malformed `|@rate` or other section.
    BadSection,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseError::NotUtf8 => "not UTF-8",
            ParseError::NoName => "no metric name",
            ParseError::NoType => "no |type",
            ParseError::BadValue => "value is not a number",
            ParseError::AbsurdValue => "value is NaN, infinite or absurdly large",
            ParseError::UnknownType => "unknown metric type",
            ParseError::BadSection => "malformed |@rate or |#tags section",
        })
    }
}

impl std::error::Error for ParseError {}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Result<Metric<'_>, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    let line = line.trim_end_matches('\r');
    let (name, rest) = line.split_once(':').ok_or(ParseError::NoName)?;
    if name.is_empty() || name.contains(['|', ' ']) {
        return Err(ParseError::NoName);
    }
    let mut sections = rest.split('|');
    let value_text = sections.next().unwrap_or("");
    let type_text = sections.next().ok_or(ParseError::NoType)?;
    let kind = match type_text {
        "c" => Kind::Counter,
        "g" => Kind::Gauge { delta: value_text.starts_with(['+', '-']) },
        "ms" => Kind::Timer,
        "h" => Kind::Histogram,
        "d" => Kind::Distribution,
        "s" => Kind::Set,
        "" => return Err(ParseError::NoType),
        _ => return Err(ParseError::UnknownType),
    };
    let (value, set_member) = if kind == Kind::Set {
        if value_text.is_empty() {
            return Err(ParseError::BadValue);
        }
        (0.0, Some(value_text))
    } else {
        let v: f64 = value_text.parse().map_err(|_| ParseError::BadValue)?;
        if !v.is_finite() || v.abs() > MAX_ABS_VALUE {
            return Err(ParseError::AbsurdValue);
        }
        (v, None)
    };
    let mut sample_rate = 1.0;
    let mut tags = None;
    for section in sections {
        if let Some(rate) = section.strip_prefix('@') {
            sample_rate = rate.parse().map_err(|_| ParseError::BadSection)?;
            if !(sample_rate > 0.0 && sample_rate <= 1.0) {
                return Err(ParseError::BadSection);
            }
        } else if let Some(t) = section.strip_prefix('#') {
            tags = Some(t);
        } else if section.starts_with('c') || section.starts_with('T') {
            // DogStatsD container id (`c:`) or timestamp (`T`): accepted, not used.
        } else {
            return Err(ParseError::BadSection);
        }
    }
    Ok(Metric { name, value, kind, sample_rate, tags, set_member })
}

/// The non-empty lines of a datagram, each parsed.
pub fn parse_datagram(datagram: &[u8]) -> impl Iterator<Item = Result<Metric<'_>, ParseError>> {
    datagram.split(|b| *b == b'\n').filter(|l| !l.is_empty() && *l != b"\r").map(parse_line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Metric<'_> {
        parse_line(line.as_bytes()).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    fn err(line: &[u8]) -> ParseError {
        parse_line(line).expect_err("should be rejected")
    }

    #[test]
    fn envoy_gauge_and_counter() {
        let m = ok("envoy.cluster.fn-hello.upstream_rq_pending_active:3|g");
        assert_eq!((m.name, m.value, m.kind), ("envoy.cluster.fn-hello.upstream_rq_pending_active", 3.0, Kind::Gauge { delta: false }));
        let m = ok("envoy.cluster.fn-hello.upstream_rq_total:1|c");
        assert_eq!((m.value, m.kind), (1.0, Kind::Counter));
    }

    #[test]
    fn gauge_deltas() {
        assert_eq!(ok("g:+4|g").kind, Kind::Gauge { delta: true });
        let m = ok("g:-2|g");
        assert_eq!((m.value, m.kind), (-2.0, Kind::Gauge { delta: true }));
    }

    #[test]
    fn timers_histograms_distributions_sets() {
        assert_eq!(ok("t:12.5|ms").kind, Kind::Timer);
        assert_eq!(ok("h:7|h").kind, Kind::Histogram);
        assert_eq!(ok("d:7|d").kind, Kind::Distribution);
        let s = ok("users:alice|s");
        assert_eq!((s.kind, s.set_member), (Kind::Set, Some("alice")));
    }

    #[test]
    fn sample_rates_and_tags() {
        let m = ok("c:1|c|@0.1|#function:hello,env:dev");
        assert_eq!(m.sample_rate, 0.1);
        assert_eq!(m.tags, Some("function:hello,env:dev"));
        let m = ok("c:1|c|#a:b|@0.5");
        assert_eq!((m.sample_rate, m.tags), (0.5, Some("a:b")));
        assert_eq!(ok("c:1|c|#a|T1656581400|c:abc").tags, Some("a"));
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert_eq!(err(b"\xff\xfe:1|c"), ParseError::NotUtf8);
        assert_eq!(err(b"no-colon"), ParseError::NoName);
        assert_eq!(err(b":1|c"), ParseError::NoName);
        assert_eq!(err(b"a:1"), ParseError::NoType);
        assert_eq!(err(b"a:1|"), ParseError::NoType);
        assert_eq!(err(b"a:1|x"), ParseError::UnknownType);
        assert_eq!(err(b"a:abc|c"), ParseError::BadValue);
        assert_eq!(err(b"a:|c"), ParseError::BadValue);
        assert_eq!(err(b"a:NaN|g"), ParseError::AbsurdValue);
        assert_eq!(err(b"a:inf|g"), ParseError::AbsurdValue);
        assert_eq!(err(b"a:1e300|g"), ParseError::AbsurdValue);
        assert_eq!(err(b"a:1|c|@0"), ParseError::BadSection);
        assert_eq!(err(b"a:1|c|@2"), ParseError::BadSection);
        assert_eq!(err(b"a:1|c|@x"), ParseError::BadSection);
        assert_eq!(err(b"a:1|c|zzz"), ParseError::BadSection);
        assert_eq!(err(b"a b:1|c"), ParseError::NoName);
    }

    #[test]
    fn datagrams_split_into_lines_and_skip_blanks() {
        let d = b"a:1|c\nb:2|g\n\nbad\r\nc:3|ms\n";
        let results: Vec<_> = parse_datagram(d).collect();
        assert_eq!(results.len(), 4);
        assert!(results[2].is_err());
        assert_eq!(results[3].as_ref().unwrap().name, "c");
    }

    #[test]
    fn truncated_line_is_rejected() {
        // A datagram cut mid-line (as a full socket buffer can do).
        let d = b"a:1|c\nenvoy.cluster.fn-x.upstream_rq_act";
        let results: Vec<_> = parse_datagram(d).collect();
        assert!(results[0].is_ok() && results[1].is_err());
    }

    #[test]
    fn huge_datagram_is_parsed_without_trouble() {
        let line = "envoy.cluster.fn-a.upstream_rq_total:1|c\n";
        let d = line.repeat(65_536 / line.len());
        assert_eq!(parse_datagram(d.as_bytes()).filter(Result::is_ok).count(), 65_536 / line.len());
    }
}
