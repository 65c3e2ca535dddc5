//! `[pools.NAME.health]` -> [`HealthConfig`]: the kind of check and its keys, timing, hysteresis
//! and what the data path does when every server is down.
//!
//! Keys that only mean something for another kind of check are refused rather than ignored, and
//! so are combinations that could never bring a server back up. Pure validation, no I/O.

use toml::Spanned;

use super::Checker;
use crate::config::raw::RawHealth;
use crate::config::{
    HealthCheck, HealthConfig, InitialState, KeyPath, OnAllDown, Problem, StatusRanges, DEFAULT_CHECK_INTERVAL,
    DEFAULT_CHECK_PATH, DEFAULT_EXPECT_STATUS, DEFAULT_FALL, DEFAULT_INITIAL_STATE, DEFAULT_ON_ALL_DOWN,
    DEFAULT_PASSIVE_FALL, DEFAULT_RISE, MAX_RISE_FALL,
};

/// The kinds of check, as spelled in the file.
const CHECKS: &[(&str, Kind)] =
    &[("tcp", Kind::Tcp), ("http", Kind::Http), ("send-expect", Kind::SendExpect), ("none", Kind::None)];
const ON_ALL_DOWN: &[(&str, OnAllDown)] = &[("reject", OnAllDown::Reject), ("fail-open", OnAllDown::FailOpen)];
const INITIAL_STATES: &[(&str, InitialState)] = &[("up", InitialState::Up), ("down", InitialState::Down)];

const PATH_RULE: &str = "must start with / and contain no spaces or control characters";
const HOST_RULE: &str = "must be a non-empty host name without spaces or control characters";
const STATUS_RULE: &str = r#"expected status codes 100 to 599 and ranges, e.g. "200-399" or "200,204,301-302""#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    None,
    Tcp,
    Http,
    SendExpect,
}

impl Checker<'_> {
    /// The pool's health settings; an absent table means every default.
    pub(super) fn health(&mut self, raw: Option<&RawHealth>, key: &KeyPath) -> HealthConfig {
        let empty = RawHealth::default();
        let raw = raw.unwrap_or(&empty);
        let kind = self.choice(&raw.check, key.key("check"), CHECKS, "tcp, http, send-expect or none");
        let kind = kind.unwrap_or(Kind::Tcp);
        let interval = self.duration(&raw.interval, key.key("interval"), false).unwrap_or(DEFAULT_CHECK_INTERVAL);
        let timeout = self.duration(&raw.timeout, key.key("timeout"), false).unwrap_or(interval);
        let rise = self.int(&raw.rise, key.key("rise"), 1, MAX_RISE_FALL).unwrap_or(DEFAULT_RISE);
        let fall = self.int(&raw.fall, key.key("fall"), 1, MAX_RISE_FALL).unwrap_or(DEFAULT_FALL);
        let passive_fall = self.int(&raw.passive_fall, key.key("passive_fall"), 0, MAX_RISE_FALL);
        let on_all_down = self.choice(&raw.on_all_down, key.key("on_all_down"), ON_ALL_DOWN, "reject or fail-open");
        let initial_state = self.choice(&raw.initial_state, key.key("initial_state"), INITIAL_STATES, "up or down");

        let owned_by = [
            (&raw.path, "path", Kind::Http, "http"),
            (&raw.expect_status, "expect_status", Kind::Http, "http"),
            (&raw.host, "host", Kind::Http, "http"),
            (&raw.send, "send", Kind::SendExpect, "send-expect"),
            (&raw.expect, "expect", Kind::SendExpect, "send-expect"),
        ];
        for (value, name, owner, check) in owned_by {
            if let Some(value) = value.as_ref().filter(|_| kind != owner) {
                self.fail(value.span().start, Problem::NotForCheck { key: key.key(name), check });
            }
        }

        let check = match kind {
            Kind::None => {
                // Without checks a server marked down would stay down for good.
                if let Some(passive) = raw.passive_fall.as_ref().filter(|p| p.get_ref().0 != 0) {
                    self.fail(passive.span().start, Problem::NeedsActiveCheck { key: key.key("passive_fall") });
                }
                if let Some(state) = raw.initial_state.as_ref().filter(|_| initial_state == Some(InitialState::Down)) {
                    self.fail(state.span().start, Problem::NeedsActiveCheck { key: key.key("initial_state") });
                }
                HealthCheck::None
            }
            Kind::Tcp => HealthCheck::Tcp,
            Kind::Http => {
                let path = self.text(&raw.path, key.key("path"), PATH_RULE, |p| p.starts_with('/') && is_visible(p));
                let host = self.text(&raw.host, key.key("host"), HOST_RULE, |h| !h.is_empty() && is_visible(h));
                let expect_status = self.status_ranges(&raw.expect_status, key.key("expect_status"));
                HealthCheck::Http {
                    path: path.unwrap_or_else(|| DEFAULT_CHECK_PATH.to_owned()),
                    expect_status: expect_status.unwrap_or(DEFAULT_EXPECT_STATUS),
                    host,
                }
            }
            Kind::SendExpect => {
                let send = raw.send.as_ref().map(|s| s.get_ref().clone()).unwrap_or_default();
                let expect = match &raw.expect {
                    Some(expect) if expect.get_ref().is_empty() => {
                        let message = "must not be empty".to_owned();
                        self.fail(expect.span().start, Problem::BadValue { key: key.key("expect"), message });
                        String::new()
                    }
                    Some(expect) => expect.get_ref().clone(),
                    None => {
                        // `kind` is send-expect only when `check` is written, so it has a span.
                        let at = raw.check.as_ref().map_or(0, |check| check.span().start);
                        self.fail(at, Problem::MissingKey { table: key.clone(), key: "expect".to_owned() });
                        String::new()
                    }
                };
                HealthCheck::SendExpect { send, expect }
            }
        };
        let passive_fall = match kind {
            Kind::None => 0,
            _ => passive_fall.unwrap_or(DEFAULT_PASSIVE_FALL),
        };
        HealthConfig {
            check,
            interval,
            timeout,
            rise,
            fall,
            passive_fall,
            on_all_down: on_all_down.unwrap_or(DEFAULT_ON_ALL_DOWN),
            initial_state: initial_state.unwrap_or(DEFAULT_INITIAL_STATE),
        }
    }

    /// One of `choices`, by its spelling; `None` when absent or unknown (the latter recorded).
    fn choice<T: Copy>(
        &mut self,
        value: &Option<Spanned<String>>,
        key: KeyPath,
        choices: &[(&str, T)],
        expected: &'static str,
    ) -> Option<T> {
        let value = value.as_ref()?;
        let found = choices.iter().find(|(name, _)| name == value.get_ref()).map(|&(_, choice)| choice);
        if found.is_none() {
            let problem = Problem::UnknownChoice { key, text: value.get_ref().clone(), expected };
            self.fail(value.span().start, problem);
        }
        found
    }

    /// A string that must satisfy `valid`; `None` when absent or invalid (the latter recorded).
    fn text(
        &mut self,
        value: &Option<Spanned<String>>,
        key: KeyPath,
        rule: &str,
        valid: fn(&str) -> bool,
    ) -> Option<String> {
        let value = value.as_ref()?;
        if valid(value.get_ref()) {
            return Some(value.get_ref().clone());
        }
        let message = format!("invalid value {:?} ({rule})", value.get_ref());
        self.fail(value.span().start, Problem::BadValue { key, message });
        None
    }

    fn status_ranges(&mut self, value: &Option<Spanned<String>>, key: KeyPath) -> Option<StatusRanges> {
        let value = value.as_ref()?;
        let parsed = parse_status_ranges(value.get_ref());
        if parsed.is_none() {
            let message = format!("invalid status list {:?} ({STATUS_RULE})", value.get_ref());
            self.fail(value.span().start, Problem::BadValue { key, message });
        }
        parsed
    }
}

/// Printable ASCII without spaces: what can go into a request line or a header unquoted.
fn is_visible(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic())
}

/// `"200-399"`, `"200,204,301-302"`: comma-separated codes and inclusive ranges, 100 to 599.
fn parse_status_ranges(text: &str) -> Option<StatusRanges> {
    let code = |part: &str| part.parse::<u16>().ok().filter(|c| (100..=599).contains(c) && part.len() == 3);
    let ranges = text
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((low, high)) => Some((code(low)?, code(high)?)).filter(|(low, high)| low <= high),
            None => code(part).map(|c| (c, c)),
        })
        .collect::<Option<Vec<_>>>()?;
    Some(StatusRanges::from_ranges(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists_parse_codes_and_ranges() {
        let parsed = parse_status_ranges("200,204,301-302").expect("valid");
        assert!(parsed.contains(200) && parsed.contains(204) && parsed.contains(301) && parsed.contains(302));
        assert!(!parsed.contains(201) && !parsed.contains(303));
        assert_eq!(parsed.to_string(), "200,204,301-302");
        assert_eq!(parse_status_ranges("200-399").map(|r| r.to_string()), Some("200-399".to_owned()));
    }

    #[test]
    fn malformed_status_lists_are_refused() {
        for text in ["", "2xx", "200-", "-200", "399-200", "99", "600", "0200", "200,,204", "200 ", "200-300-400"] {
            assert_eq!(parse_status_ranges(text), None, "{text:?}");
        }
    }
}
